"""Reading user tables (CSV, JSON/JSONL, parquet, saved ``datasets``) and built-in datasets."""

from __future__ import annotations

import csv
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from pandas.io.common import get_handle

from nlptransfer.data.images import is_image_folder, read_image_folder, read_npz
from nlptransfer.errors import DataError, DataFileNotFoundError

SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet", ".npz")

Frames = dict[str, pd.DataFrame]

# Reading some columns of a CSV parses about this much text at a time (see _read_csv).
_CSV_CHUNK_CHARS = 8 * 2**20


class MissingColumnsError(DataError):
    """A table lacks columns that were asked for; ``existing`` lists the columns it has."""

    def __init__(self, source: str, missing: list[str], existing: list[Any], split: str = "data") -> None:
        self.missing, self.existing, self.split = missing, [str(c) for c in existing], split
        super().__init__(
            f"'{source}' has no column {', '.join(map(repr, missing))}. Columns that exist: "
            f"{', '.join(map(repr, self.existing)) or 'none (is the file empty?)'}."
        )


def read_table(path: str, columns: Sequence[str] | None = None, text_columns: Collection[str] = ()) -> Frames:
    """Read one file or saved ``datasets`` folder into ``{split name: DataFrame}``.

    A file gives ``{"data": frame}``; a saved ``DatasetDict`` gives its splits; a folder of
    class sub-folders of images gives a frame of image paths and labels (see
    :func:`~nlptransfer.data.images.read_image_folder`).

    ``columns`` keeps only those columns, in that order; CSV/TSV, parquet and saved datasets never
    load the others. Each must exist, else :class:`MissingColumnsError`. ``text_columns`` of a CSV/TSV
    file are read as written, never as numbers ("007" stays "007"); JSON keeps the types it spells.
    """
    file = Path(path).expanduser()
    if not file.exists():
        raise DataFileNotFoundError(f"Data file '{path}' does not exist (resolved to {file.resolve()}).")
    if file.is_dir():
        saved = any((file / marker).is_file() for marker in ("dataset_dict.json", "state.json"))
        if not saved and is_image_folder(file):
            return {
                name: select_columns(f, columns, path, name) for name, f in read_image_folder(file).items()
            }
        return _read_saved_dataset(file, columns)
    if file.suffix == ".npz":
        return {name: select_columns(f, columns, path, name) for name, f in read_npz(file).items()}
    suffix = "".join(s for s in file.suffixes[-2:] if s in (*SUFFIXES, ".gz", ".bz2")) or file.suffix
    base = suffix.replace(".gz", "").replace(".bz2", "")
    if base not in (".csv", ".tsv", ".json", ".jsonl", ".parquet"):
        raise DataError(
            f"Cannot read '{path}': unknown file type '{file.suffix}'. Use one of "
            f"{', '.join(SUFFIXES)} (optionally .gz/.bz2), a folder saved by datasets.save_to_disk, "
            "or a folder of images in one sub-folder per class."
        )
    try:
        return {"data": _read_file(file, path, base, columns, text_columns)}
    except UnicodeDecodeError as err:
        raise DataError(f"'{path}' is not valid UTF-8 text ({err}). Re-save the file as UTF-8.") from err
    except (OSError, EOFError) as err:  # also a damaged or cut-off .gz/.bz2 file
        packed = f" Check that it is a complete {suffix} file." if suffix != base else ""
        raise DataError(f"Could not read '{path}': {str(err).rstrip('.')}.{packed}") from err
    except (ValueError, TypeError, pd.errors.ParserError) as err:
        if isinstance(err, DataError):
            raise
        raise _parse_error(path, base, err) from err


def select_columns(
    frame: pd.DataFrame, columns: Sequence[str] | None, source: str, split: str = "data"
) -> pd.DataFrame:
    """``frame`` with only ``columns`` (all of them when None); a missing one is a MissingColumnsError."""
    if columns is None:
        return frame
    _check_columns(columns, list(frame.columns), source, split)
    return frame[list(columns)]


def _check_columns(columns: Sequence[str], existing: list[Any], source: str, split: str = "data") -> None:
    missing = [c for c in columns if c not in existing]
    if missing:
        raise MissingColumnsError(source, missing, existing, split)


def _read_file(
    file: Path, source: str, base: str, columns: Sequence[str] | None, text_columns: Collection[str]
) -> pd.DataFrame:
    if base in (".csv", ".tsv"):
        return _read_csv(file, source, "\t" if base == ".tsv" else ",", columns, text_columns)
    if base == ".jsonl":
        return select_columns(pd.read_json(file, lines=True, dtype=False), columns, source)
    if base == ".json":
        return select_columns(_read_json(file), columns, source)
    return _read_parquet(file, source, columns)


def _read_csv(
    file: Path, source: str, sep: str, columns: Sequence[str] | None, text_columns: Collection[str]
) -> pd.DataFrame:
    # Only truly empty cells are missing: "NA", "None" or "null" can be real texts or labels.
    options: dict[str, Any] = {"sep": sep, "keep_default_na": False, "na_values": [""]}
    options["dtype"] = dict.fromkeys(text_columns, str)
    if columns is None:
        return pd.read_csv(file, **options)
    header = pd.read_csv(file, nrows=0, **options)
    _check_columns(columns, list(header.columns), source)
    # usecols never converts the other columns, and chunks bound the raw text pandas holds at
    # once (by default about 2**20 / (number of columns) rows), so a wide unused column costs little.
    options["chunksize"] = max(1, _CSV_CHUNK_CHARS // _row_chars(file, source, sep))
    parts = _read_chunks(file, columns, options)
    if not parts:
        return header[list(columns)]
    frame = pd.concat(parts, ignore_index=True)
    for name in _guessed_apart(parts):
        # Numbers in one chunk, text in another: read the column as text, as one whole read would.
        frame[name] = pd.concat(_read_chunks(file, [name], {**options, "dtype": {name: str}}))[name].values
    return frame if list(frame.columns) == list(columns) else frame[list(columns)]  # usecols keeps file order


def _read_chunks(file: Path, columns: Sequence[str], options: dict[str, Any]) -> list[pd.DataFrame]:
    with pd.read_csv(file, usecols=list(columns), **options) as chunks:
        return list(chunks)


def _guessed_apart(parts: list[pd.DataFrame]) -> list[str]:
    """Columns whose chunks got different types, other than int64 and float (which concat unifies as
    a whole read would; uint64, for numbers past 2**63, would lose digits)."""
    types = pd.api.types
    mixed = []
    for name in parts[0].columns:
        dtypes = {part[name].dtype for part in parts}
        numbers = all(types.is_float_dtype(t) or types.is_signed_integer_dtype(t) for t in dtypes)
        if len(dtypes) > 1 and not numbers:
            mixed.append(name)
    return mixed


def _row_chars(file: Path, source: str, sep: str) -> int:
    """The mean characters per row, after refusing a row with more fields than the header.

    pandas refuses such rows too, but not with usecols: it keeps the first fields, so an
    unquoted separator in a text would shift that row into the wrong columns, silently.
    """
    limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # a text cell may be a whole document; the default stops at 128 KiB
    try:
        # pandas' own opener: the same compressions (gz, bz2, xz, zip, zst) that read_csv infers.
        with get_handle(file, "r", encoding="utf-8", compression="infer") as opened:
            rows = csv.reader(opened.handle, delimiter=sep)
            width, count, chars = len(next(rows, [])), 0, 0
            for row in rows:
                if len(row) > width:
                    raise DataError(
                        f"Line {rows.line_num} of '{source}' has {len(row)} fields, the header {width}. "
                        f"Put a text that holds {sep!r} in double quotes."
                    )
                count, chars = count + 1, chars + sum(map(len, row)) + len(row)
    finally:
        csv.field_size_limit(limit)
    return max(1, chars // max(1, count))


def _read_parquet(file: Path, source: str, columns: Sequence[str] | None) -> pd.DataFrame:
    if columns is not None:
        import pyarrow.parquet as pq

        names = [n for n in pq.read_schema(file).names if not n.startswith("__index_level_")]
        _check_columns(columns, names, source)
    return pd.read_parquet(file, columns=None if columns is None else list(columns))


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
        return _read_lines(file, path)
    try:
        frames = read_table(path, columns=[text_column], text_columns=[text_column])
    except MissingColumnsError as err:
        raise DataError(f"{err} Pass --text_column.") from err
    chosen = [frames["train"]] if "train" in frames else list(frames.values())
    texts = [str(t) for frame in chosen for t in frame[text_column].dropna()]
    return [t for t in texts if t.strip()]


def _read_lines(file: Path, path: str) -> list[str]:
    # Line by line, so a large corpus is never held twice (as one string and as its lines).
    try:
        with file.open(encoding="utf-8") as handle:
            return [part for line in handle for part in line.splitlines() if part.strip()]
    except UnicodeDecodeError as err:
        raise DataError(f"'{path}' is not valid UTF-8 text ({err}). Re-save the file as UTF-8.") from err


def _read_json(file: Path) -> pd.DataFrame:
    # dtype=False: a JSON string stays a string; pandas would turn "007" into 7 and dates into Timestamps.
    try:
        return pd.read_json(file, dtype=False)
    except ValueError:
        # Many ".json" files are really JSON Lines.
        return pd.read_json(file, lines=True, dtype=False)


def _read_saved_dataset(folder: Path, columns: Sequence[str] | None = None) -> Frames:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(folder))
    except (FileNotFoundError, ValueError) as err:
        raise DataError(
            f"'{folder}' is a folder but not one written by datasets.save_to_disk: {err}"
        ) from err
    if isinstance(loaded, datasets.DatasetDict):
        return {name: _dataset_frame(split, columns, str(folder), name) for name, split in loaded.items()}
    return {"data": _dataset_frame(loaded, columns, str(folder))}


def _dataset_frame(
    dataset: Any, columns: Sequence[str] | None = None, source: str = "", split: str = "data"
) -> pd.DataFrame:
    """A ``datasets.Dataset`` as a frame, with ClassLabel ids turned back into their names."""
    import datasets

    if columns is not None:
        _check_columns(columns, dataset.column_names, source, split)
        dataset = dataset.select_columns(list(columns))  # the others stay on disk, unread
    frame = dataset.to_pandas()
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.ClassLabel):
            frame[name] = [feature.int2str(int(v)) if pd.notna(v) else None for v in frame[name]]
    return frame
