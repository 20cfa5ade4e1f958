"""From raw tables to clean, label-encoded train / validation / test splits."""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from nlptransfer.config import DataOptions
from nlptransfer.data.images import has_image, image_key, resolve_paths
from nlptransfer.data.sources import BUILTIN_DATASETS, Frames, MissingColumnsError, read_table, select_columns
from nlptransfer.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


@dataclass
class Split:
    """Inputs (texts, optionally with pairs, or images) and integer label ids of one split."""

    inputs: list[Any]  # texts, or images (paths, arrays, ...)
    labels: list[int]
    pairs: list[str] | None = None

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass
class LabelledData:
    label_names: list[str]
    train: Split
    validation: Split
    test: Split | None = None
    report: dict[str, Any] = field(default_factory=dict)
    # "text", or "image" when the inputs are images (see nlptransfer.data.images).
    modality: str = "text"


@dataclass(frozen=True)
class Columns:
    text: str
    label: str
    pair: str | None = None

    def all(self) -> list[str]:
        # An empty name is a column name like any other (JSON allows it); only None means "none".
        return [c for c in (self.text, self.pair, self.label) if c is not None]

    def inputs(self) -> list[str]:
        """The columns of texts (or image paths): read as written, never parsed as numbers."""
        return [c for c in (self.text, self.pair) if c is not None]


def load_data(config: DataOptions) -> LabelledData:
    """Read, validate, clean and split the data a run was configured with (its data section;
    a whole ``FinetuneConfig`` is one too)."""
    frames, folders, columns, images = _read_frames(config)
    if images:
        frames = {name: _resolve_images(f, columns.text, folders.get(name)) for name, f in frames.items()}
    report: dict[str, Any] = {"dropped_rows": {}}
    # Each raw frame is let go as soon as it is cleaned: the data is never held twice.
    cleaned = {name: _clean(frames.pop(name), name, columns, report, images) for name in list(frames)}
    train = cleaned["train"]
    # Test first, so the test set does not move when --validation_split changes; both
    # fractions are of the whole training data (as the config's sum check assumes).
    test_fraction = 0.0
    if "test" not in cleaned and config.test_split > 0:
        test_fraction = config.test_split
        train, cleaned["test"] = _split(train, columns.label, test_fraction, config.seed, "test")
    if "validation" not in cleaned:
        fraction = config.validation_split / (1 - test_fraction)
        train, cleaned["validation"] = _split(train, columns.label, fraction, config.seed, "validation")
    if config.max_train_examples and config.max_train_examples < len(train):
        train = _subsample(train, columns.label, config.max_train_examples, config.seed)
    if config.samples_per_label is not None:
        train = _per_label_sample(train, columns.label, config.samples_per_label, config.seed, report)
    if config.validation_samples_per_label is not None:
        cleaned["validation"] = _per_label_sample(
            cleaned["validation"],
            columns.label,
            config.validation_samples_per_label,
            config.seed,
            report,
            split="validation",
        )
    label_names, to_id = _label_map(train[columns.label])
    for name in ("validation", "test"):
        if name in cleaned:
            _check_known_labels(cleaned[name][columns.label], set(to_id), name)
    _warn_leakage(train, cleaned, columns.text, report, images)
    splits = {
        name: _to_split(frame, columns, to_id, images) for name, frame in cleaned.items() if name != "train"
    }
    return LabelledData(
        label_names=label_names,
        train=_to_split(train, columns, to_id, images),
        validation=splits["validation"],
        test=splits.get("test"),
        report=report,
        modality="image" if images else "text",
    )


def _columns(config: DataOptions, names: Collection[str] | None) -> tuple[Columns, bool]:
    """The columns to read, and whether the inputs are images, given the training data's column
    ``names`` (None: not known yet, so no ``image`` column can stand in for the text column)."""
    image_column = config.image_column or _implicit_image_column(names, config)
    if image_column is None:
        _check_distinct(text=config.text_column, text_pair=config.text_pair_column, label=config.label_column)
        return Columns(config.text_column, config.label_column, config.text_pair_column), False
    if config.text_pair_column:
        raise DataError("--text_pair_column pairs two texts; an image classifier takes one image per row.")
    _check_distinct(image=image_column, label=config.label_column)
    return Columns(image_column, config.label_column), True


def _check_distinct(**columns: str | None) -> None:
    # One column in two roles would make the label part of the input (or vice versa).
    named = [(role, name) for role, name in columns.items() if name is not None]
    for i, (role, name) in enumerate(named):
        for other, other_name in named[i + 1 :]:
            if name == other_name:
                raise ConfigError(
                    f"--{role}_column and --{other}_column both name the column {name!r}; "
                    "give each its own column."
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
        else "--text_column / --label_column (and --text_pair_column), or --image_column for images,"
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
    frame: pd.DataFrame, split: str, columns: Columns, report: dict[str, Any], images: bool = False
) -> pd.DataFrame:
    if frame.empty:
        raise DataError(f"The {split} data has no rows.")
    _check_label_values(frame[columns.label], split)
    keep = frame[columns.label].notna()
    for col in (columns.text, columns.pair):
        if col is not None and images:
            keep &= frame[col].map(has_image)
        elif col is not None:
            keep &= frame[col].notna() & (frame[col].astype(str).str.strip() != "")
    dropped = int((~keep).sum())
    if dropped:
        logger.warning(
            "Dropped %d of %d %s rows with a missing/empty %s or a missing label.",
            dropped,
            len(frame),
            split,
            "image" if images else "text",
        )
        report["dropped_rows"][split] = dropped
    # The frame holds only the run's columns already; with nothing dropped, no copy is needed.
    cleaned = (frame.loc[keep] if dropped else frame).reset_index(drop=True)
    if cleaned.empty:
        raise DataError(f"No usable rows left in the {split} data after dropping {dropped} empty ones.")
    return cleaned


def _check_label_values(labels: pd.Series, split: str) -> None:
    # JSON can hold a list or object per label; as a class name its str() would be a silent guess.
    if labels.dtype != object:
        return
    nested = (list, dict, tuple, set, np.ndarray)
    position = next((i for i, value in enumerate(labels) if isinstance(value, nested)), None)
    if position is not None:
        raise DataError(
            f"The {split} data has the label {labels.iloc[position]!r} (row {position + 1}); a label must be "
            "one string, number or boolean per row. For multi-label data, give one row per label."
        )


def _split(
    frame: pd.DataFrame, label: str, fraction: float, seed: int, name: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    if fraction <= 0:
        raise DataError(f"No {name} data: pass --{name}_file or a --{name}_split above 0.")
    labels = frame[label].astype(str)
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


def _subsample(frame: pd.DataFrame, label: str, size: int, seed: int) -> pd.DataFrame:
    labels = frame[label].astype(str)
    stratify = labels if labels.value_counts().min() >= 2 and size >= labels.nunique() else None
    try:
        kept, _ = train_test_split(frame, train_size=size, stratify=stratify, random_state=seed)
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


def _normalise_label(value: Any) -> Any:
    if isinstance(value, np.generic):  # numpy int64 is not an ``int``: numeric order needs Python ints
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


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
    return list({(type(v), v): v for v in map(_normalise_label, uniques)}.values())


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


def _label_strings(values: pd.Series) -> list[str]:
    return [str(_normalise_label(v)) for v in values]


def _check_known_labels(values: pd.Series, known: set[str], split: str) -> None:
    unseen = sorted(set(_label_strings(values)) - known)
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


def _to_split(frame: pd.DataFrame, columns: Columns, to_id: dict[str, int], images: bool = False) -> Split:
    inputs = frame[columns.text]
    return Split(
        inputs=inputs.tolist() if images else inputs.astype(str).tolist(),
        labels=[to_id[s] for s in _label_strings(frame[columns.label])],
        pairs=frame[columns.pair].astype(str).tolist() if columns.pair is not None else None,
    )
