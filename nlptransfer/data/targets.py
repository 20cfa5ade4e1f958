"""What a row's label is: one class, a set of labels, or numbers; read, checked and encoded.

The problem type is given (``--problem_type``) or inferred from the training labels, and the
inference is logged with its reason; labels that could be read two ways stop the run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from nlptransfer.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

SINGLE, MULTI, REGRESSION = "single_label_classification", "multi_label_classification", "regression"
# Integer labels with more distinct values than this could be classes or a score: ask.
MAX_INTEGER_CLASSES = 20


@dataclass(frozen=True)
class Target:
    """How the label columns of a table become targets.

    ``form``: ``label`` (one class per row), ``columns`` (one 0/1 column per label), ``delimited``
    (one column of labels joined by ``separator``), ``list`` (one list per row) or ``numbers``.
    """

    problem_type: str
    columns: tuple[str, ...]
    form: str
    separator: str | None = None
    reason: str = ""

    def missing(self, frame: pd.DataFrame) -> pd.Series:
        """Rows with no usable target (an empty label set is one: no label applies)."""
        if self.form == "delimited":
            return pd.Series(False, index=frame.index)
        if self.form == "numbers":
            return self.numbers(frame, "data", check=False).isna().any(axis=1)
        return frame[list(self.columns)].isna().any(axis=1)

    def strata(self, frame: pd.DataFrame) -> pd.Series | None:
        """What a stratified split keeps in proportion (single-label classes only)."""
        return label_strings(frame[self.columns[0]]) if self.problem_type == SINGLE else None

    def check(self, frame: pd.DataFrame, split: str) -> None:
        """Stop on values the form cannot read: text in numeric targets, other than 0/1 in label columns."""
        if self.form == "numbers":
            self.numbers(frame, split)
        elif self.form == "columns":
            values = self.numbers(frame, split, check=False)
            for column in self.columns:
                _check_binary(frame[column], values[column], f"The {split} data's label column '{column}'")

    def numbers(self, frame: pd.DataFrame, split: str, check: bool = True) -> pd.DataFrame:
        """The numeric targets; a value that is not a number is an error naming its rows."""
        values = frame[list(self.columns)].apply(pd.to_numeric, errors="coerce")
        if check:
            for column in self.columns:
                bad = values[column].isna() & frame[column].notna()
                if bad.any():
                    rows = np.flatnonzero(bad.to_numpy())[:5]
                    shown = ", ".join(f"row {i + 1}: {frame[column].iloc[i]!r}" for i in rows)
                    raise DataError(
                        f"The {split} data's target column '{column}' holds {int(bad.sum())} values that "
                        f"are not numbers ({shown}). A regression needs numeric targets: fix those rows, "
                        "or pass --problem_type single_label_classification if they are classes."
                    )
        return values

    def label_sets(self, frame: pd.DataFrame) -> list[list[str]]:
        """Each row's labels (multi-label)."""
        if self.form == "columns":
            matrix = self.numbers(frame, "data").to_numpy()
            return [[c for c, v in zip(self.columns, row, strict=True) if v] for row in matrix]
        column = frame[self.columns[0]]
        if self.form == "delimited":
            return [_split_labels(v, self.separator) for v in column]
        return [[str(normalise_label(v)) for v in _as_list(value)] for value in column]


def _check_binary(raw: pd.Series, values: pd.Series, where: str) -> None:
    bad = raw.notna() & ~values.isin([0, 1])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{where} holds {raw.iloc[row]!r} (row {row + 1}) and {int(bad.sum()) - 1} more values other "
            "than 0/1. Multi-label columns hold 0 or 1 (or true/false); for numeric targets pass "
            "--problem_type regression."
        )


def resolve_target(frame: pd.DataFrame, label_column: str, options: Any) -> Target:
    """The target of a run: from --problem_type, --label_columns, --label_separator and the labels."""
    columns = tuple(options.label_columns or (label_column,))
    wanted = options.problem_type
    if options.label_separator is not None:
        if wanted not in (None, MULTI):
            raise ConfigError(f"--label_separator reads label sets; it cannot serve --problem_type {wanted}.")
        return Target(MULTI, columns, "delimited", options.label_separator, "--label_separator was given")
    if len(columns) > 1:
        return _several_columns(frame, columns, wanted)
    return _one_column(frame[columns[0]], columns, wanted)


def _several_columns(frame: pd.DataFrame, columns: tuple[str, ...], wanted: str | None) -> Target:
    if wanted == SINGLE:
        raise ConfigError(
            "--problem_type single_label_classification reads one --label_column; --label_columns "
            "serve multi-label (0/1 columns) or regression (numeric columns)."
        )
    values = Target(REGRESSION, columns, "numbers").numbers(frame, "train", check=wanted == REGRESSION)
    binary = all(values[c].dropna().isin([0, 1]).all() for c in columns)
    text = [c for c in columns if (values[c].isna() & frame[c].notna()).any()]
    if wanted == MULTI or (wanted is None and (binary or text)):
        for column in columns:
            _check_binary(frame[column], values[column], f"The train data's label column '{column}'")
        return Target(MULTI, columns, "columns", reason=f"{len(columns)} label columns, all 0/1")
    reason = "the label columns hold numbers other than 0/1" if wanted is None else "--problem_type"
    return Target(REGRESSION, columns, "numbers", reason=reason)


def _one_column(values: pd.Series, columns: tuple[str, ...], wanted: str | None) -> Target:
    present = values.dropna()
    form = _column_form(present, columns[0])
    if form == "list":
        if wanted not in (None, MULTI):
            raise DataError(f"The label column '{columns[0]}' holds lists; that is multi-label data.")
        return Target(MULTI, columns, "list", reason="the label column holds a list per row")
    if wanted == MULTI:
        raise ConfigError(
            "--problem_type multi_label_classification needs label sets: --label_columns (one 0/1 "
            "column per label), --label_separator (labels joined in one column), or a list per row."
        )
    if wanted is not None:
        return Target(
            wanted, columns, "numbers" if wanted == REGRESSION else "label", reason="--problem_type"
        )
    return _infer_scalar(present, columns)


def _column_form(present: pd.Series, column: str) -> str:
    """``list`` when every label is a list (or a JSON list in a string), else ``scalar``."""
    if _numeric(present) or present.empty:
        return "scalar"
    lists = present.map(lambda v: _as_list(v, strict=True) is not None)
    if lists.all():
        return "list"
    if lists.any():
        first, other = present[lists].iloc[0], present[~lists].iloc[0]
        raise DataError(
            f"The label column '{column}' mixes forms: some rows hold a list of labels ({first!r}) and "
            f"others a single label ({other!r}). Give every row a list (multi-label) or one label."
        )
    nested = present.map(lambda v: isinstance(v, dict | set | tuple | np.ndarray))
    if nested.any():
        raise DataError(
            f"The label column '{column}' holds {present[nested].iloc[0]!r}; a label must be one string, "
            "number or boolean per row, or a list of labels (multi-label)."
        )
    return "scalar"


def _infer_scalar(present: pd.Series, columns: tuple[str, ...]) -> Target:
    if not _numeric(present) or present.empty:
        return Target(SINGLE, columns, "label", reason="the labels are names")
    numeric = present.astype(float)
    if not np.all(np.mod(numeric, 1) == 0):
        return Target(REGRESSION, columns, "numbers", reason="the labels are numbers with fractions")
    distinct = numeric.nunique()
    if distinct > MAX_INTEGER_CLASSES:
        raise ConfigError(
            f"The label column '{columns[0]}' holds {distinct} distinct whole numbers: classes or a score "
            "to predict? Pass --problem_type single_label_classification or --problem_type regression."
        )
    return Target(SINGLE, columns, "label", reason=f"{distinct} distinct whole-number labels")


def _numeric(values: pd.Series) -> bool:
    """Numbers (not booleans, which are class names here) in a numeric column."""
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _as_list(value: Any, strict: bool = False) -> list[Any] | None:
    """A list label (a list, or a string holding a JSON list); else None with ``strict``, [value]."""
    if isinstance(value, list | tuple | np.ndarray):
        return list(value)
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            return parsed
    return None if strict else [value]


def _split_labels(value: Any, separator: str | None) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return [part.strip() for part in str(value).split(separator) if part.strip()]


def normalise_label(value: Any) -> Any:
    if isinstance(value, np.generic):  # numpy int64 is not an ``int``: numeric order needs Python ints
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def label_strings(values: pd.Series) -> pd.Series:
    return values.map(lambda v: str(normalise_label(v)))


def sorted_names(names: set[str]) -> list[str]:
    """Label names in their natural order: numbers numerically, otherwise alphabetically."""
    try:
        return sorted(names, key=float)
    except ValueError:
        return sorted(names)


def encode_label_sets(sets: list[list[str]], names: list[str]) -> np.ndarray:
    """A (rows, labels) 0/1 matrix, float32 (the loss's dtype)."""
    index = {name: j for j, name in enumerate(names)}
    matrix = np.zeros((len(sets), len(names)), dtype=np.float32)
    for i, labels in enumerate(sets):
        matrix[i, [index[name] for name in labels]] = 1.0
    return matrix


def summarize(problem_type: str, names: list[str], labels: Any) -> dict[str, Any]:
    """The training targets in numbers for results.json and ``advise``: balance, label frequency, spread."""
    if problem_type == SINGLE:
        counts = np.bincount(np.asarray(labels), minlength=len(names))
        ratio = float(counts.max() / max(counts.min(), 1))
        return {"class_counts": dict(zip(names, counts.tolist(), strict=True)), "imbalance_ratio": ratio}
    matrix = np.asarray(labels)
    if problem_type == MULTI:
        counts = matrix.sum(0).astype(int).tolist()
        return {
            "label_counts": dict(zip(names, counts, strict=True)),
            "labels_per_example": float(matrix.sum(1).mean()),
            "examples_without_label": int((matrix.sum(1) == 0).sum()),
        }
    return {
        "mean": dict(zip(names, matrix.mean(0).tolist(), strict=True)),
        "std": dict(zip(names, matrix.std(0).tolist(), strict=True)),
    }
