"""Property-based fuzzing of data loading.

Whatever a data file holds, ``read_table`` / ``read_texts`` / ``load_data`` either give
consistent data or raise a documented error (an ``NLPTransferError``); any other exception is a
bug. Reading only some columns must give the cells a whole read gives. Examples are
derandomized, so CI sees the same inputs on every run.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import io
import json
import math
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from nlptransfer.config import FinetuneConfig
from nlptransfer.data import read_table, read_texts, sources
from nlptransfer.data.prepare import LabelledData, load_data
from nlptransfer.errors import NLPTransferError

FORMATS = (".csv", ".tsv", ".json", ".jsonl")
# utf-8 weighs most: the other encodings are refused, and valid files must load often enough.
ENCODINGS = ("utf-8", "utf-8", "utf-8", "utf-8", "latin-1", "utf-16")

# CI runs the same small derandomized search every time; NLPTRANSFER_FUZZ_EXAMPLES=2000 searches
# deeper and at random (pytest --hypothesis-seed=N to repeat a run), for local bug hunts.
DEEP = "NLPTRANSFER_FUZZ_EXAMPLES" in os.environ
FUZZ = settings(
    max_examples=int(os.environ.get("NLPTRANSFER_FUZZ_EXAMPLES", "60")),
    derandomize=not DEEP,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Names and texts that have broken CSV/JSON readers before, next to arbitrary text.
TRICKY = ["", " ", ",", "\t", '"', "'", "\n", "a\nb", "text,label", "NA", "nan", "None", "null", "007",
          "1.50", "1e3", "true", "\x00", "\r", "\ufeff", "é", "[]", "{}"]  # fmt: skip

column_names = st.one_of(st.sampled_from(["text", "label", "pair", *TRICKY]), st.text(max_size=6))
texts = st.one_of(st.sampled_from(TRICKY), st.text(max_size=12))
# Texts a reader might take for numbers, booleans or dates.
lookalikes = st.one_of(
    st.sampled_from(["007", "1.50", "1e3", "-0", "0x1F", "true", "False", "2020-01-02", "NaN", "inf"]),
    st.integers().map(str), st.floats().map(str),
)  # fmt: skip
# Lists and objects reach the frame as they are from JSON (and as their str() from CSV).
nested = st.one_of(
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2)
)
cell_values = st.one_of(texts, st.integers(), st.floats(), st.booleans(), st.none(), nested)
label_values = st.one_of(
    st.integers(-3, 3), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4), st.booleans(), st.none(), nested,
)  # fmt: skip


Table = tuple[list[str], list[list[Any]], dict[str, str | None]]


@st.composite
def tables(draw: st.DrawFn) -> Table:
    """Column names, rows whose labels come from a small pool, and the column options.

    The text column is first and the label column last; now and then a name repeats, or an
    option names a column that may be missing or already taken by another role.
    """
    names = draw(st.lists(column_names, min_size=2, max_size=4, unique=True))
    if draw(st.integers(0, 7)) == 0:
        names.insert(1, draw(st.sampled_from(names)))
    rows = draw(table_rows(len(names), draw(st.lists(label_values, min_size=2, max_size=4))))
    pair = names[1] if len(names) > 2 and draw(st.booleans()) else None
    columns = {"text_column": names[0], "label_column": names[-1], "text_pair_column": pair}
    if draw(st.integers(0, 7)) == 0:
        columns[draw(st.sampled_from(sorted(columns)))] = draw(column_names)
    return names, rows, columns


@st.composite
def table_rows(draw: st.DrawFn, width: int, labels: list[Any]) -> list[list[Any]]:
    """Up to 30 rows of any cells, with a label from ``labels`` in the last column."""
    rows = []
    for _ in range(draw(st.integers(0, 30))):
        row = [draw(st.one_of(texts, cell_values)) for _ in range(width)]
        row[-1] = draw(st.sampled_from(labels))
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def _write_table(path: Path, names: list[str], rows: list[list[Any]], encoding: str) -> None:
    if path.suffix in (".csv", ".tsv"):
        out = io.StringIO()
        writer = csv.writer(out, delimiter="\t" if path.suffix == ".tsv" else ",")
        writer.writerow(names)
        writer.writerows([[_cell(v) for v in row] for row in rows])
        content = out.getvalue()
    else:
        records = [dict(zip(names, row, strict=True)) for row in rows]
        lines = [json.dumps(r) for r in records]
        content = "\n".join(lines) if path.suffix == ".jsonl" else json.dumps(records)
    path.write_bytes(content.encode(encoding, errors="replace"))


def _in_temp_file(suffix: str, write: Callable[[Path], None], check: Callable[[Path], None]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"train{suffix}"
        write(path)
        check(path)


def _check_consistent(data: LabelledData, rows: int, dropped: int, options: dict[str, Any]) -> None:
    """``rows`` were written, of which ``dropped`` (counted by the caller, not by the package) must go."""
    names = data.label_names
    assert len(names) >= 2 and len(set(names)) == len(names)
    assert all(isinstance(n, str) for n in names)
    splits = [data.train, data.validation] + ([data.test] if data.test is not None else [])
    for split in splits:
        assert len(split) > 0 and len(split.labels) == len(split.inputs)
        assert all(isinstance(t, str) and t.strip() for t in split.inputs)
        assert all(0 <= y < len(names) for y in split.labels)
        if split.pairs is not None:
            assert len(split.pairs) == len(split.inputs)
            assert all(isinstance(p, str) and p.strip() for p in split.pairs)
    assert sum(data.report["dropped_rows"].values()) == dropped
    _check_sizes(data, rows - dropped, options)


# docs/reliability.md row 3: a row goes when its text (or pair) is missing, empty or only whitespace,
# or its label is missing; "NA", "None" or "null" are texts and labels like any other.


def _written_cells(names: list[str], row: list[Any], suffix: str, encoding: str) -> dict[str, Any]:
    """Each column's cell as the file holds it: None where it holds nothing (an empty CSV field,
    a JSON null or NaN), else the string a CSV field holds, or the JSON value.

    A CSV header that repeats a name gives the repeat as ``name.1`` (as pandas reads it); a JSON
    object keeps the last value of a repeated key.
    """
    if suffix in (".json", ".jsonl"):
        return {
            n: None if isinstance(v, float) and math.isnan(v) else v for n, v in zip(names, row, strict=True)
        }
    cells: dict[str, Any] = {}
    seen: Counter[str] = Counter()
    for name, value in zip(names, row, strict=True):
        field = _cell(value).encode(encoding, errors="replace").decode(encoding)
        cells[f"{name}.{seen[name]}" if seen[name] else name] = field or None
        seen[name] += 1
    return cells


def _drops(cells: dict[str, Any], text: str, label: str, pair: str | None) -> bool:
    inputs = [cells[text]] + ([cells[pair]] if pair is not None else [])
    return cells[label] is None or any(v is None or not str(v).strip() for v in inputs)


def _dropped_in_table(
    names: list[str], rows: list[list[Any]], suffix: str, encoding: str, options: dict[str, Any]
) -> int:
    text, label = options.get("text_column", "text"), options.get("label_column", "label")
    pair = options.get("text_pair_column")
    return sum(_drops(_written_cells(names, row, suffix, encoding), text, label, pair) for row in rows)


def _dropped_in_frame(frame: pd.DataFrame) -> int:
    """For random bytes, which have no table of their own: the same rule on the cells as read."""
    cells = frame.astype(object).where(frame.notna(), None)
    return sum(_drops(row, "text", "label", None) for row in cells.to_dict("records"))


def _check_sizes(data: LabelledData, kept: int, options: dict[str, Any]) -> None:
    """Every kept row is in one split, unless an option samples the training (or validation) rows."""
    held = len(data.validation) + (len(data.test) if data.test is not None else 0)
    per_label, val_per_label = options.get("samples_per_label"), options.get("validation_samples_per_label")
    if val_per_label is not None:
        assert len(data.validation) <= val_per_label * len(data.label_names)
        assert len(data.train) + held <= kept
        return
    if per_label is not None:
        assert len(data.train) <= min(per_label * len(data.label_names), kept - held)
    else:
        limit = options.get("max_train_examples") or kept
        assert len(data.train) == min(limit, kept - held)


def _load_or_documented_error(
    path: Path, written: list[tuple[list[str], list[list[Any]], str]] | None = None, **options: Any
) -> LabelledData | None:
    """load_data's result, or None when it refused the input with a documented error.

    ``written``: the column names, rows and encoding of the training file (and of the test file)
    this test wrote, from which the rows to drop are counted.
    """
    try:
        config = FinetuneConfig(train_file=str(path), **options)
        data = load_data(config)
    except NLPTransferError as err:
        # --hypothesis-show-statistics then tells what was explored.
        event(f"refused: {str(err).replace(str(path), 'FILE')[:140]}")
        return None
    event("loaded")
    if written is None:  # random bytes: read_table's rows are the reference
        files = [str(path)] + ([options["test_file"]] if "test_file" in options else [])
        frames = [read_table(f, text_columns=["text"])["data"] for f in files]
        rows, dropped = sum(map(len, frames)), sum(map(_dropped_in_frame, frames))
    else:
        rows = sum(len(table_rows) for _, table_rows, _ in written)
        dropped = sum(_dropped_in_table(n, r, path.suffix, e, options) for n, r, e in written)
    _check_consistent(data, rows, dropped, options)
    return data


# --------------------------------------------------------------------------- raw bytes


PACKERS = {".gz": gzip.compress, ".bz2": bz2.compress}


@FUZZ
@given(
    suffix=st.sampled_from((*FORMATS, ".txt", ".parquet", ".csv.gz", ".jsonl.bz2")),
    header=st.sampled_from([b"", b"text,label\n", b"text\tlabel\n", b'{"text": "a", "label": 1}\n']),
    body=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
        st.lists(st.sampled_from([*TRICKY, "a", "1", "pos"]), max_size=40).map(
            lambda parts: "".join(parts).encode()
        ),
    ),
    packing=st.sampled_from(["whole", "cut", "none"]),
)
def test_random_bytes_load_or_fail_clearly(suffix: str, header: bytes, body: bytes, packing: str) -> None:
    """Random bytes, and for .gz/.bz2 random bytes compressed whole, cut off, or not at all."""
    content = header + body
    pack = PACKERS.get(Path(suffix).suffix)
    if pack is not None and packing != "none":
        content = pack(content)[: -4 if packing == "cut" else None]

    def check(path: Path) -> None:
        with contextlib.suppress(NLPTransferError):
            texts = read_texts(str(path))
            assert all(isinstance(t, str) and t.strip() for t in texts)
        if suffix != ".txt":  # a .txt file holds unlabelled texts, for pretraining only
            _load_or_documented_error(path)

    _in_temp_file(suffix, lambda p: p.write_bytes(content), check)


# --------------------------------------------------------------------------- structured tables


# Options that pick rows: splits of the whole, a subsample, few-shot samples per label.
row_options = st.fixed_dictionaries(
    {
        "validation_split": st.sampled_from([0.1, 0.3, 0.5]),
        "test_split": st.sampled_from([0.0, 0.2]),
        "max_train_examples": st.sampled_from([None, None, 1, 3]),
    }
) | st.fixed_dictionaries(
    {"samples_per_label": st.sampled_from([1, 2]), "validation_samples_per_label": st.sampled_from([None, 1])}
)


@FUZZ
@given(
    table=tables(),
    suffix=st.sampled_from(FORMATS),
    encoding=st.sampled_from(ENCODINGS),
    options=row_options,
    test_labels=st.none() | st.lists(label_values, min_size=1, max_size=3),
    data=st.data(),
)
def test_random_tables_load_consistently_or_fail_clearly(
    table: Table,
    suffix: str,
    encoding: str,
    options: dict[str, Any],
    test_labels: list[Any] | None,
    data: st.DataObject,
) -> None:
    """Also with a --test_file of the same columns whose labels may be new, or of another kind."""
    names, rows, columns = table
    test_rows = None if test_labels is None else data.draw(table_rows(len(names), test_labels))
    options = dict(options)  # gains test_file below; the drawn dict stays as drawn

    written = [(names, rows, encoding)] + ([] if test_rows is None else [(names, test_rows, encoding)])

    def write(path: Path) -> None:
        _write_table(path, names, rows, encoding)
        if test_rows is not None:
            _write_table(path.with_name(f"test{suffix}"), names, test_rows, encoding)
            options["test_file"] = str(path.with_name(f"test{suffix}"))

    _in_temp_file(suffix, write, lambda p: _load_or_documented_error(p, written, **columns, **options))


# --------------------------------------------------------------------------- reading some columns


def _cells(frame: pd.DataFrame) -> list[list[str | None]]:
    """Values as strings: chunks may type True as "True" where a whole read keeps the bool."""
    return [[None if _missing(v) else str(v) for v in frame[c]] for c in frame.columns]


def _missing(value: Any) -> bool:
    # A whole read can keep "" where a number overflows int64 (a pandas quirk); both are blank.
    if isinstance(value, str):
        return value == ""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


@FUZZ
@given(
    table=tables(),
    suffix=st.sampled_from(FORMATS),
    chunk_chars=st.sampled_from([1, 30, 2**23]),
    data=st.data(),
)
def test_reading_some_columns_gives_what_a_whole_read_holds(
    table: Table, suffix: str, chunk_chars: int, data: st.DataObject
) -> None:
    """Column pushdown (in chunks of any size) reads the same cells, or refuses the same files."""
    names, rows, _ = table

    def check(path: Path) -> None:
        try:
            whole = read_table(str(path))["data"]
        except NLPTransferError:
            whole = None
        refused = whole is None or whole.columns.empty or not isinstance(whole.index, pd.RangeIndex)
        wanted = data.draw(
            st.lists(
                st.sampled_from(names if refused else list(whole.columns)),
                min_size=1,
                max_size=3,
                unique=True,
            )
        )
        with mock.patch.object(sources, "_CSV_CHUNK_CHARS", chunk_chars):
            if refused:
                # Unreadable, no columns, or a first row longer than the header (pandas took its
                # first field as an index; reading some columns refuses such a row).
                with pytest.raises(NLPTransferError):
                    read_table(str(path), wanted)
                return
            some = read_table(str(path), wanted)["data"]
        assert list(some.columns) == wanted
        assert _cells(some) == _cells(whole[wanted])

    _in_temp_file(suffix, lambda p: _write_table(p, names, rows, "utf-8"), check)


# --------------------------------------------------------------------------- exact round trip


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip()


@FUZZ
@given(
    suffix=st.sampled_from(FORMATS),
    rows=st.lists(st.tuples(st.one_of(texts, lookalikes), st.sampled_from(["pos", "neg"])), max_size=30),
    sure=st.lists(lookalikes.filter(str.strip), min_size=6, max_size=6),
)
def test_texts_and_labels_survive_loading_unchanged(
    suffix: str, rows: list[tuple[str, str]], sure: list[str]
) -> None:
    """Texts that look like numbers, "NA" or "null" are texts: nothing may rewrite them."""
    # Three non-blank rows per label, so every input here is valid and must load.
    rows = rows + [(text, ("pos", "neg")[i % 2]) for i, text in enumerate(sure)]
    expected = Counter((t, y) for t, y in rows if not _blank(t))

    def check(path: Path) -> None:
        data = load_data(FinetuneConfig(train_file=str(path)))
        _check_consistent(data, len(rows), sum(_blank(t) for t, _ in rows), {})
        got = Counter()
        for split in (data.train, data.validation):
            got.update((t, data.label_names[y]) for t, y in zip(split.inputs, split.labels, strict=True))
        assert got == expected

    _in_temp_file(
        suffix, lambda p: _write_table(p, ["text", "label"], [list(r) for r in rows], "utf-8"), check
    )
