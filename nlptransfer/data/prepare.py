"""From raw tables to clean, label-encoded train / validation / test splits."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from nlptransfer.config import DataOptions
from nlptransfer.data.corpora import BUILTIN_DATASETS
from nlptransfer.data.images import has_image, image_key, resolve_paths
from nlptransfer.data.sources import Frames, MissingColumnsError, read_table, select_columns
from nlptransfer.data.targets import (
    MULTI,
    REGRESSION,
    SINGLE,
    Target,
    encode_label_sets,
    label_strings,
    normalise_label,
    resolve_target,
    sorted_names,
    summarize,
)
from nlptransfer.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


@dataclass
class Split:
    """Inputs (texts, optionally with pairs, or images) and targets of one split.

    ``labels``: class ids (single-label), a (rows, labels) 0/1 matrix (multi-label) or a
    (rows, targets) matrix of numbers (regression), in the order of ``LabelledData.label_names``.
    """

    inputs: list[Any]  # texts, or images (paths, arrays, ...)
    labels: list[int] | np.ndarray
    pairs: list[str] | None = None

    def __len__(self) -> int:
        return len(self.inputs)

    def select(self, rows: Sequence[int]) -> Split:
        """The examples at ``rows``, in that order."""
        labels = (
            self.labels[list(rows)] if isinstance(self.labels, np.ndarray) else [self.labels[i] for i in rows]
        )
        pairs = [self.pairs[i] for i in rows] if self.pairs is not None else None
        return Split([self.inputs[i] for i in rows], labels, pairs)

    def concat(self, other: Split) -> Split:
        """This split's examples followed by ``other``'s."""
        if isinstance(self.labels, np.ndarray):
            labels: list[int] | np.ndarray = np.concatenate([self.labels, np.asarray(other.labels)])
        else:
            labels = list(self.labels) + list(other.labels)
        pairs = self.pairs + (other.pairs or []) if self.pairs is not None else None
        return Split(self.inputs + other.inputs, labels, pairs)


@dataclass
class LabelledData:
    # Class names, label names (multi-label) or target names (regression): one per head output.
    label_names: list[str]
    train: Split
    # None when no validation split is held out (--protocol cross-validation took it in).
    validation: Split | None
    test: Split | None = None
    report: dict[str, Any] = field(default_factory=dict)
    # "text", or "image" when the inputs are images (see nlptransfer.data.images).
    modality: str = "text"
    problem_type: str = SINGLE


@dataclass(frozen=True)
class Columns:
    text: str
    labels: tuple[str, ...]
    pair: str | None = None

    @property
    def label(self) -> str:
        return self.labels[0]

    def all(self) -> list[str]:
        # An empty name is a column name like any other (JSON allows it); only None means "none".
        return [c for c in (self.text, self.pair) if c is not None] + list(self.labels)

    def inputs(self) -> list[str]:
        """The columns of texts (or image paths): read as written, never parsed as numbers."""
        return [c for c in (self.text, self.pair) if c is not None]


def load_data(config: DataOptions) -> LabelledData:
    """Read, validate, clean and split the data a run was configured with (its data section;
    a whole ``FinetuneConfig`` is one too)."""
    frames, folders, columns, images = _read_frames(config)
    if images:
        frames = {name: _resolve_images(f, columns.text, folders.get(name)) for name, f in frames.items()}
    target = resolve_target(frames["train"], columns.label, config)
    logger.info("problem type: %s (%s)", target.problem_type, target.reason)
    report: dict[str, Any] = {"dropped_rows": {}, "problem_type": target.problem_type,
                              "problem_type_reason": target.reason}  # fmt: skip
    # Each raw frame is let go as soon as it is cleaned: the data is never held twice.
    cleaned = {name: _clean(frames.pop(name), name, columns, target, report, images) for name in list(frames)}
    _split_and_sample(cleaned, target, config, report)
    train = cleaned["train"]
    names = _target_names(train, target)
    _warn_leakage(train, cleaned, columns.text, report, images)
    splits = {name: _to_split(frame, columns, target, names, name, images) for name, frame in cleaned.items()}
    report["targets"] = summarize(target.problem_type, names, splits["train"].labels)
    return LabelledData(
        label_names=names,
        train=splits["train"],
        validation=splits["validation"],
        test=splits.get("test"),
        report=report,
        modality="image" if images else "text",
        problem_type=target.problem_type,
    )


def _split_and_sample(cleaned: Frames, target: Target, config: DataOptions, report: dict[str, Any]) -> None:
    """Held-out splits taken from the training data where no file gives them, then the sampling
    options, in place."""
    train = cleaned["train"]
    # Test first, so the test set does not move when --validation_split changes; both
    # fractions are of the whole training data (as the config's sum check assumes).
    test_fraction = 0.0
    if "test" not in cleaned and config.test_split > 0:
        test_fraction = config.test_split
        train, cleaned["test"] = _split(train, target, test_fraction, config.seed, "test")
    if "validation" not in cleaned:
        fraction = config.validation_split / (1 - test_fraction)
        train, cleaned["validation"] = _split(train, target, fraction, config.seed, "validation")
    if config.max_train_examples and config.max_train_examples < len(train):
        train = _subsample(train, target, config.max_train_examples, config.seed)
    for split, k in (
        ("train", config.samples_per_label),
        ("validation", config.validation_samples_per_label),
    ):
        if k is None:
            continue
        if target.problem_type != SINGLE:
            raise ConfigError(
                f"--{'' if split == 'train' else split + '_'}samples_per_label draws K examples of each "
                f"class: single-label classification only (this is {target.problem_type}). Use "
                "--max_train_examples to train on fewer examples."
            )
        frame = train if split == "train" else cleaned[split]
        sampled = _per_label_sample(frame, target.columns[0], k, config.seed, report, split=split)
        train, cleaned[split] = (sampled, cleaned[split]) if split == "train" else (train, sampled)
    cleaned["train"] = train


def _columns(config: DataOptions, names: Collection[str] | None) -> tuple[Columns, bool]:
    """The columns to read, and whether the inputs are images, given the training data's column
    ``names`` (None: not known yet, so no ``image`` column can stand in for the text column)."""
    image_column = config.image_column or _implicit_image_column(names, config)
    if image_column is None:
        labels = tuple(config.label_columns or (config.label_column,))
        roles = [("--text_column", config.text_column), ("--text_pair_column", config.text_pair_column)]
        _check_distinct(roles + _label_roles(config, labels))
        return Columns(config.text_column, labels, config.text_pair_column), False
    if config.text_pair_column:
        raise DataError("--text_pair_column pairs two texts; an image classifier takes one image per row.")
    labels = tuple(config.label_columns or (config.label_column,))
    _check_distinct([("--image_column", image_column), *_label_roles(config, labels)])
    return Columns(image_column, labels), True


def _label_roles(config: DataOptions, labels: tuple[str, ...]) -> list[tuple[str, str | None]]:
    if len(set(labels)) < len(labels):
        raise ConfigError(f"--label_columns names a column twice: {list(labels)}.")
    return [("--label_columns" if config.label_columns else "--label_column", c) for c in labels]


def _check_distinct(roles: list[tuple[str, str | None]]) -> None:
    # One column in two roles would make the label part of the input (or vice versa).
    named = [(flag, name) for flag, name in roles if name is not None]
    for i, (flag, name) in enumerate(named):
        for other, other_name in named[i + 1 :]:
            if name == other_name:
                raise ConfigError(
                    f"{flag} and {other} both name the column {name!r}; give each its own column."
                )


def _implicit_image_column(names: Collection[str] | None, config: DataOptions) -> str | None:
    """``image`` when the data has such a column and no text column (image folders, MNIST, ...)."""
    if names is not None and config.text_column not in names and "image" in names:
        logger.info("No '%s' column but an 'image' column: training an image classifier.", config.text_column)
        return "image"
    return None


def _resolve_images(frame: pd.DataFrame, column: str, folder: Path | None) -> pd.DataFrame:
    return frame if folder is None else resolve_paths(frame, column, folder)


def _read_frames(config: DataOptions) -> tuple[Frames, dict[str, Path], Columns, bool]:
    """The splits, holding only the columns a run reads; for splits read from a file, the folder
    relative image paths start from; the columns; and whether the inputs are images."""
    if config.train_file is None:
        if config.validation_file or config.test_file:
            raise DataError("--validation_file/--test_file need --train_file as well.")
        frames = BUILTIN_DATASETS.get(config.dataset)()
        columns, images = _columns(config, list(frames["train"].columns))
        return _select(frames, columns, images, config.dataset), {}, columns, images
    first, columns, images = _read_train(config, config.train_file)
    if "data" in first:
        frames = {"train": first["data"]}
    elif "train" in first:
        frames = {k: v for k, v in first.items() if k in ("train", "validation", "test")}
    else:
        raise DataError(f"'{config.train_file}' holds the splits {sorted(first)} but no 'train' split.")
    folders = {name: _folder_of(config.train_file) for name in frames}
    for name, path in (("validation", config.validation_file), ("test", config.test_file)):
        if path is not None:
            frames[name] = _pick_split(_read(path, columns, images, name), name, path)
            folders[name] = _folder_of(path)
    return frames, folders, columns, images


def _read_train(config: DataOptions, path: str) -> tuple[Frames, Columns, bool]:
    """The training file's columns for text; or, when it has no text column but an ``image`` one,
    for images."""
    columns, images = _columns(config, None)
    try:
        return read_table(path, columns.all(), columns.inputs()), columns, images
    except MissingColumnsError as err:
        found = _columns(config, err.existing)
        if found == (columns, images):
            raise _missing_columns(err, "train", images) from err
        columns, images = found
    return _read(path, columns, images, "train"), columns, images


def _read(path: str, columns: Columns, images: bool, split: str) -> Frames:
    try:
        return read_table(path, columns.all(), columns.inputs())
    except MissingColumnsError as err:
        raise _missing_columns(err, split, images) from err


def _select(frames: Frames, columns: Columns, images: bool, source: str) -> Frames:
    try:
        return {name: select_columns(frame, columns.all(), source, name) for name, frame in frames.items()}
    except MissingColumnsError as err:
        raise _missing_columns(err, err.split, images) from err


def _missing_columns(err: MissingColumnsError, split: str, images: bool) -> DataError:
    flags = (
        "--image_column / --label_column"
        if images
        else "--text_column / --label_column or --label_columns (and --text_pair_column), or "
        "--image_column for images,"
    )
    split = split if err.split == "data" else err.split
    missing = ", ".join(map(repr, err.missing))
    existing = ", ".join(map(repr, err.existing)) or "none (is the file empty?)"
    return DataError(
        f"The {split} data has no column {missing}. Columns that exist: {existing}. "
        f"Pass {flags} with the right names."
    )


def _folder_of(path: str) -> Path:
    file = Path(path).expanduser()
    return file if file.is_dir() else file.parent


def _pick_split(loaded: Frames, name: str, path: str) -> pd.DataFrame:
    if "data" in loaded:
        return loaded["data"]
    if name in loaded:
        return loaded[name]
    raise DataError(f"'{path}' holds the splits {sorted(loaded)} but no '{name}' split.")


def _clean(
    frame: pd.DataFrame,
    split: str,
    columns: Columns,
    target: Target,
    report: dict[str, Any],
    images: bool = False,
) -> pd.DataFrame:
    if frame.empty:
        raise DataError(f"The {split} data has no rows.")
    target.check(frame, split)  # values the target cannot read stop the run, naming their rows
    no_target = target.missing(frame)
    keep = ~no_target
    for col in (columns.text, columns.pair):
        if col is not None and images:
            keep &= frame[col].map(has_image)
        elif col is not None:
            keep &= frame[col].notna() & (frame[col].astype(str).str.strip() != "")
    dropped = int((~keep).sum())
    if dropped:
        what = "target (NaN)" if target.problem_type == REGRESSION else "label"
        logger.warning(
            "Dropped %d of %d %s rows with a missing/empty %s or a missing %s.",
            dropped, len(frame), split, "image" if images else "text", what,
        )  # fmt: skip
        report["dropped_rows"][split] = dropped
        if no_target.any():
            report.setdefault("dropped_missing_target", {})[split] = int(no_target.sum())
    # The frame holds only the run's columns already; with nothing dropped, no copy is needed.
    cleaned = (frame.loc[keep] if dropped else frame).reset_index(drop=True)
    if cleaned.empty:
        raise DataError(f"No usable rows left in the {split} data after dropping {dropped} empty ones.")
    return cleaned


def _split(
    frame: pd.DataFrame, target: Target, fraction: float, seed: int, name: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    if fraction <= 0:
        raise DataError(f"No {name} data: pass --{name}_file or a --{name}_split above 0.")
    labels = target.strata(frame)
    stratify = None
    if labels is not None:
        counts = labels.value_counts()
        stratify = labels if counts.min() >= 2 and int(len(frame) * fraction) >= len(counts) else None
        if stratify is None:
            logger.warning("Too few examples per class for a stratified %s split; splitting at random.", name)
    try:
        kept, held = train_test_split(frame, test_size=fraction, stratify=stratify, random_state=seed)
    except ValueError as err:
        raise DataError(
            f"Cannot split off {fraction:.0%} as {name} data from {len(frame)} rows: {err}"
        ) from err
    return kept.reset_index(drop=True), held.reset_index(drop=True)


def _subsample(frame: pd.DataFrame, target: Target, size: int, seed: int) -> pd.DataFrame:
    labels = target.strata(frame)
    usable = labels is not None and labels.value_counts().min() >= 2 and size >= labels.nunique()
    try:
        kept, _ = train_test_split(
            frame, train_size=size, stratify=labels if usable else None, random_state=seed
        )
    except ValueError as err:
        raise DataError(f"Cannot take --max_train_examples {size} from {len(frame)} rows: {err}") from err
    return kept.reset_index(drop=True)


def _per_label_sample(
    frame: pd.DataFrame, label: str, k: int, seed: int, report: dict[str, Any], split: str = "train"
) -> pd.DataFrame:
    """K rows of each label (few-shot), drawn with ``seed``; a smaller label keeps all its rows.

    Each label's rows are permuted with one generator in sorted-label order and the first K
    kept, so for one seed the K=8 sample is part of the K=16 sample (nested few-shot curves).
    """
    rng = np.random.default_rng(seed)
    labels = frame[label].astype(str)
    kept: list[int] = []
    counts: dict[str, int] = {}
    for name in sorted(labels.unique()):
        rows = np.flatnonzero((labels == name).to_numpy())
        if len(rows) < k:
            flag = "--samples_per_label" if split == "train" else f"--{split}_samples_per_label"
            logger.warning("%s %d: label %r has only %d %s examples; keeping all.",
                           flag, k, name, len(rows), "training" if split == "train" else split)  # fmt: skip
        chosen = rows[rng.permutation(len(rows))[:k]]
        kept.extend(chosen.tolist())
        counts[name] = len(chosen)
    key = "samples_per_label" if split == "train" else f"{split}_samples_per_label"
    report[key] = {"k": k, "seed": seed, f"{split}_examples_per_label": counts}
    # Original row order (already shuffled by the splits), not blocks of one label.
    return frame.iloc[sorted(kept)].reset_index(drop=True)


def _label_map(values: pd.Series) -> tuple[list[str], dict[str, int]]:
    """Sorted label names and name -> id.

    Labels of one kind sort naturally (numbers numerically, False before True); a mix of
    kinds is sorted as strings, with a warning, since no order between them means anything.
    """
    by_kind: dict[str, dict[str, Any]] = {}
    for value in _unique_labels(values):
        by_kind.setdefault(_label_kind(value), {})[str(value)] = value
    if len(by_kind) == 1:
        ((kind, named),) = by_kind.items()
        names = sorted(named, key=named.__getitem__) if kind in ("numbers", "booleans") else sorted(named)
        if kind == "strings" and all(_is_integer(name) for name in names):
            names.sort(key=int)  # "2" before "10", as when the file stores the labels as numbers
    else:
        logger.warning("Labels mix %s; treating them all as strings.", " and ".join(sorted(by_kind)))
        names = sorted({name for named in by_kind.values() for name in named})
    if len(names) < 2:
        raise DataError(
            f"The training data has a single class ({names[0]!r}); a classifier needs at least two. "
            "Check --label_column and that the file holds every class."
        )
    return names, {name: i for i, name in enumerate(names)}


def _unique_labels(values: pd.Series) -> list[Any]:
    # pandas' unique() merges values that compare equal across types (True == 1 == 1.0), which
    # would give True and 1 one id but two names; only object columns can hold such a mix.
    uniques = values if values.dtype == object else values.unique()
    return list({(type(v), v): v for v in map(normalise_label, uniques)}.values())


def _is_integer(name: str) -> bool:
    try:
        int(name)
    except ValueError:
        return False
    return True


def _label_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "booleans"
    if isinstance(value, int | float):
        return "numbers"
    return "strings" if isinstance(value, str) else type(value).__name__


def _target_names(train: pd.DataFrame, target: Target) -> list[str]:
    """One name per head output: the classes, the labels (multi-label) or the targets (regression)."""
    if target.problem_type == SINGLE:
        return _label_map(train[target.columns[0]])[0]
    if target.problem_type == REGRESSION:
        values = target.numbers(train, "train")
        constant = [c for c in target.columns if values[c].nunique() < 2]
        if constant:
            raise DataError(
                f"The target {constant} is constant in the training data ({values[constant[0]].iloc[0]!r} in "
                "every row): there is nothing to learn. Check --label_column / --label_columns."
            )
        return list(target.columns)
    names = (
        list(target.columns)
        if target.form == "columns"
        else sorted_names({label for labels in target.label_sets(train) for label in labels})
    )
    if not names:
        raise DataError("No training example has any label: a multi-label classifier needs labels to learn.")
    return names


def _check_known_labels(values: Collection[str], known: set[str], split: str) -> None:
    unseen = sorted(set(values) - known)
    if unseen:
        raise DataError(
            f"The {split} data has labels never seen in training: {unseen[:10]}. Known labels: "
            f"{sorted(known)}. Fix the labels, or add examples of these classes to the training data."
        )


def _warn_leakage(
    train: pd.DataFrame, frames: Frames, column: str, report: dict[str, Any], images: bool = False
) -> None:
    def keys(values: pd.Series) -> pd.Series:
        return values.map(image_key) if images else values.astype(str)

    seen = set(keys(train[column]))
    for name in ("validation", "test"):
        if name in frames:
            overlap = int(keys(frames[name][column]).isin(seen).sum())
            if overlap:
                kind = "images" if images else "texts"
                logger.warning("%d %s %s also appear in the training data (leakage).", overlap, name, kind)
                report.setdefault("overlap_with_train", {})[name] = overlap


def _to_split(
    frame: pd.DataFrame, columns: Columns, target: Target, names: list[str], split: str, images: bool = False
) -> Split:
    inputs = frame[columns.text]
    return Split(
        inputs=inputs.tolist() if images else inputs.astype(str).tolist(),
        labels=_encode(frame, target, names, split),
        pairs=frame[columns.pair].astype(str).tolist() if columns.pair is not None else None,
    )


def _encode(frame: pd.DataFrame, target: Target, names: list[str], split: str) -> list[int] | np.ndarray:
    if target.problem_type == REGRESSION:
        return target.numbers(frame, split).to_numpy(np.float32)
    if target.problem_type == MULTI:
        sets = target.label_sets(frame)
        _check_known_labels({label for labels in sets for label in labels}, set(names), split)
        return encode_label_sets(sets, names)
    values = label_strings(frame[target.columns[0]]).tolist()
    _check_known_labels(values, set(names), split)
    to_id = {name: i for i, name in enumerate(names)}
    return [to_id[v] for v in values]
