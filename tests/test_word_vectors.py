"""Word vectors (GloVe, word2vec, fastText through gensim) behind the Backbone contract."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import NEGATIVE, POSITIVE, sentiment_frame
from gensim.models import FastText, KeyedVectors
from gensim.models.fasttext import save_facebook_model

from nlptransfer import ConfigError, ModelLoadError, TransferModel, load_backbone
from nlptransfer.backbones import VocabOptions, WordVectorBackbone
from nlptransfer.backbones.word_vectors import load_vectors, train_word_vectors
from nlptransfer.cli import main as cli_main

WORDS = POSITIVE + NEGATIVE + ["the", "a", "movie", "film", "plot"]


@pytest.fixture(scope="module")
def keyed_vectors() -> KeyedVectors:
    rng = np.random.default_rng(0)
    kv = KeyedVectors(vector_size=8)
    vectors = rng.normal(size=(len(WORDS), 8)).astype(np.float32)
    vectors[: len(POSITIVE), 0] += 3.0  # a direction that separates the sentiment words
    vectors[len(POSITIVE) : len(POSITIVE) + len(NEGATIVE), 0] -= 3.0
    kv.add_vectors(WORDS, vectors)
    return kv


@pytest.fixture(scope="module")
def vector_files(keyed_vectors: KeyedVectors, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("vectors")
    keyed_vectors.save_word2vec_format(str(folder / "w2v.txt"))
    keyed_vectors.save_word2vec_format(str(folder / "w2v.bin"), binary=True)
    lines = (folder / "w2v.txt").read_text().splitlines()[1:]  # GloVe: no header line
    (folder / "glove.txt").write_text("\n".join(lines) + "\n")
    keyed_vectors.save(str(folder / "native.kv"), sep_limit=0)  # vectors in their own .npy
    sentences = [t.split() for t in sentiment_frame(200)["text"]]
    save_facebook_model(FastText(sentences, vector_size=8, min_count=1, epochs=2, seed=0, workers=1),
                        str(folder / "ft.bin"))  # fmt: skip
    return {
        "word2vec-text": f"word2vec:{folder / 'w2v.txt'}",
        "word2vec-binary": f"word2vec:{folder / 'w2v.bin'}",
        "glove": f"glove:{folder / 'glove.txt'}",
        "fasttext-vec": f"fasttext:{folder / 'w2v.txt'}",
        "fasttext-bin": f"fasttext:{folder / 'ft.bin'}",
        "kv": f"kv:{folder / 'native.kv'}",
    }


@pytest.mark.parametrize("kind", ["word2vec-text", "word2vec-binary", "glove", "fasttext-vec"])
def test_every_format_loads_the_same_vectors(kind, vector_files, keyed_vectors) -> None:
    vectors = load_vectors(vector_files[kind])
    assert vectors.words == WORDS
    assert np.allclose(vectors.matrix, keyed_vectors.vectors, atol=1e-5)


def test_native_keyed_vectors_need_an_explicit_opt_in(vector_files, keyed_vectors) -> None:
    with pytest.raises(ConfigError, match="pickle"):
        load_vectors(vector_files["kv"])
    vectors = load_vectors(vector_files["kv"], allow_pickle=True)
    assert isinstance(vectors.matrix, np.memmap)  # memory-mapped, not read into RAM
    assert np.allclose(vectors.matrix, keyed_vectors.vectors)


def test_fasttext_bin_gives_subword_vectors_for_unknown_words(vector_files) -> None:
    vectors = load_vectors(vector_files["fasttext-bin"])
    assert vectors.subword is not None
    assert "superbly" not in vectors.index()
    assert np.abs(vectors.subword("superbly")).sum() > 0


def test_vocabulary_embedding_and_coverage(vector_files, keyed_vectors) -> None:
    texts = ["good movie", "good zzz film", "zzz qqq", "awful"]
    backbone = WordVectorBackbone.from_source(vector_files["glove"], texts, VocabOptions(min_count=1))
    assert backbone.vocab[:2] == ["<pad>", "<unk>"]
    assert set(backbone.vocab[2:]) == {"good", "movie", "zzz", "film", "qqq", "awful"}
    row = backbone.word_to_id["good"]
    assert torch.allclose(backbone.embeddings.weight[row], torch.from_numpy(keyed_vectors["good"]))
    assert backbone.embeddings.weight[backbone.word_to_id["zzz"]].abs().sum() == 0  # oov=zero
    assert backbone.report["types_found"] == 4 and backbone.report["types"] == 6
    assert backbone.report["token_coverage_pct"] == pytest.approx(100 * 5 / 8)
    limited = WordVectorBackbone.from_source(vector_files["glove"], texts, VocabOptions(min_count=2))
    assert limited.vocab[2:] == ["good", "zzz"]


def test_oov_policies(vector_files) -> None:
    texts = ["good zzz"]
    random = WordVectorBackbone.from_source(vector_files["glove"], texts, VocabOptions(oov="random"))
    assert random.embeddings.weight[random.word_to_id["zzz"]].abs().sum() > 0
    with pytest.raises(ConfigError, match="fastText"):
        WordVectorBackbone.from_source(vector_files["glove"], texts, VocabOptions(oov="subword"))
    sub = WordVectorBackbone.from_source(
        vector_files["fasttext-bin"], ["good superbly"], VocabOptions(oov="subword")
    )
    assert sub.embeddings.weight[sub.word_to_id["superbly"]].abs().sum() > 0


def test_bad_sources_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_vectors(f"glove:{tmp_path / 'missing.txt'}")
    (tmp_path / "bad.txt").write_text("not a vector file\n")
    with pytest.raises(ModelLoadError, match="Could not read"):
        load_vectors(f"word2vec:{tmp_path / 'bad.txt'}")


@pytest.mark.parametrize("encoder", ["none", "bilstm", "cnn"])
def test_save_load_round_trip_and_padding(vector_files, encoder: str, tmp_path: Path) -> None:
    texts = sentiment_frame(20)["text"].tolist()
    backbone = load_backbone(
        vector_files["glove"], vocabulary_texts=texts, word_options=VocabOptions(encoder=encoder)
    )
    ids = [id(p) for g in backbone.layer_groups() for _, p in g.parameters]
    assert sorted(ids) == sorted(id(p) for p in backbone.parameters())
    model = TransferModel.from_backbone(
        backbone, ["neg", "pos"], pooling="max" if encoder == "cnn" else "mean"
    )
    model.eval()
    with torch.inference_mode():
        alone = model.encode(**backbone.collate(model.preprocess(["good movie"])))
        padded = model.encode(
            **backbone.collate(model.preprocess(["good movie", "the plot was awful and dull"]))
        )
    assert torch.allclose(alone, padded[:1], atol=1e-5)
    model.save_pretrained(tmp_path)
    loaded = TransferModel.from_pretrained(tmp_path)
    probe = ["good movie", "never seen words", ""]
    assert np.array_equal(loaded.predict(probe).probabilities, model.predict(probe).probabilities)


def test_recipe_bag_of_embeddings_and_frozen_bilstm(vector_files, tmp_path: Path) -> None:
    sentiment_frame(160).to_csv(tmp_path / "train.csv", index=False)
    common = ["train", "--model", vector_files["word2vec-text"], "--train_file", str(tmp_path / "train.csv")]
    assert cli_main([*common, "--learning_rate", "1e-2", "--output_dir", str(tmp_path / "bag")]) == 0
    bag = json.loads((tmp_path / "bag" / "results.json").read_text())
    assert bag["validation"]["accuracy"] >= 0.9  # the vectors carry the sentiment direction
    assert bag["backbone"]["types_found"] == len(WORDS)
    lstm_args = ["--word_encoder", "bilstm", "--strategy", "finetune", "--unfreeze_layers", "1",
                 "--body_lr_scale", "1", "--epochs", "3", "--output_dir", str(tmp_path / "lstm")]  # fmt: skip
    assert cli_main([*common, *lstm_args]) == 0
    lstm = json.loads((tmp_path / "lstm" / "results.json").read_text())
    assert lstm["validation"]["accuracy"] >= 0.9
    trained = TransferModel.from_pretrained(tmp_path / "lstm").backbone
    pretrained = load_vectors(vector_files["word2vec-text"])
    for word, row in trained.word_to_id.items():
        if word in pretrained.index():  # the pretrained rows did not move during training
            expected = torch.from_numpy(np.array(pretrained.matrix[pretrained.index()[word]]))
            assert torch.equal(trained.embeddings.weight[row], expected)
    table = (tmp_path / "lstm" / "trainable_layers.md").read_text()
    assert "| backbone.embeddings     |" in table and "encoder.bilstm" in table


def test_train_your_own_vectors_then_reuse_them(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(sentiment_frame(300)["text"]))
    assert cli_main(["train-vectors", "--input_file", str(corpus), "--output", str(tmp_path / "v.txt"),
                     "--dim", "16", "--min_count", "1"]) == 0  # fmt: skip
    vectors = load_vectors(f"word2vec:{tmp_path / 'v.txt'}")
    assert vectors.matrix.shape[1] == 16 and "superb" in vectors.index()
    spec = train_word_vectors(
        corpus.read_text().splitlines(), tmp_path / "ft.bin", "fasttext", dim=8, min_count=1
    )
    assert load_vectors(spec).subword is not None


def test_feature_extraction_refuses_to_freeze_a_random_encoder(vector_files, tmp_path: Path) -> None:
    sentiment_frame(40).to_csv(tmp_path / "train.csv", index=False)
    args = ["train", "--model", vector_files["glove"], "--train_file", str(tmp_path / "train.csv"),
            "--word_encoder", "bilstm", "--output_dir", str(tmp_path / "out"),
            "--strategy", "feature-extraction"]  # fmt: skip
    assert cli_main(args) == 2
    assert not (tmp_path / "out" / "results.json").exists()


def test_sif_weights_down_weight_frequent_words(vector_files) -> None:
    texts = ["the good movie", "the bad film", "the plot"]
    options = VocabOptions(weighting="sif")
    backbone = WordVectorBackbone.from_source(vector_files["glove"], texts, options)
    weight = dict(zip(backbone.vocab, backbone.word_weights, strict=True))
    total = 8  # tokens in the texts
    assert weight["the"] == pytest.approx(1e-3 / (1e-3 + 3 / total))
    assert weight["good"] == pytest.approx(1e-3 / (1e-3 + 1 / total))
    assert weight["<pad>"] == 0.0
    ids = torch.tensor([[backbone.word_to_id["the"], backbone.word_to_id["good"]]])
    out = backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    row = backbone.embeddings.weight[backbone.word_to_id["the"]] * weight["the"]
    assert torch.allclose(out[0, 0], row)


def test_text_pairs_enter_the_vocabulary(vector_files, tmp_path: Path) -> None:
    frame = sentiment_frame(60).assign(other="superb film")
    frame.to_csv(tmp_path / "pairs.csv", index=False)
    out = tmp_path / "out"
    args = ["train", "--model", vector_files["glove"], "--train_file", str(tmp_path / "pairs.csv"),
            "--text_pair_column", "other", "--epochs", "2", "--output_dir", str(out)]  # fmt: skip
    assert cli_main(args) == 0
    assert "superb" in TransferModel.from_pretrained(out).backbone.word_to_id


def test_word2vec_vectors_saved_as_bin_read_back_as_binary(tmp_path: Path) -> None:
    texts = sentiment_frame(100)["text"].tolist()
    spec = train_word_vectors(texts, tmp_path / "w2v.bin", "word2vec", dim=8, min_count=1)
    assert load_vectors(spec).matrix.shape[1] == 8
    with pytest.raises(ConfigError, match=r"\.bin"):
        train_word_vectors(texts, tmp_path / "ft.txt", "fasttext", dim=8, min_count=1)
    with pytest.raises(ConfigError, match="min_count"):
        train_word_vectors(texts, tmp_path / "none.txt", "word2vec", dim=8, min_count=10_000)


def test_text_vectors_convert_once_then_memory_map(tmp_path, caplog):
    import logging

    from nlptransfer.backbones.vector_cache import entry_dir

    file = tmp_path / "glove.txt"
    file.write_text("good 0.1 0.2\nbad 0.3 -0.1\nmovie 0.0 0.5\n")
    first = load_vectors(f"glove:{file}")
    assert not isinstance(first.matrix, np.memmap)  # parsed by gensim
    entry = entry_dir("glove", file)
    assert (entry / "vectors.npy").is_file() and (entry / "words.json").is_file()
    second = load_vectors(f"glove:{file}")
    assert isinstance(second.matrix, np.memmap)  # read back, not parsed
    assert second.words == first.words == ["good", "bad", "movie"]
    np.testing.assert_array_equal(np.asarray(second.matrix), first.matrix)
    # An edited file is a new entry: never stale vectors.
    file.write_text("good 1.0 2.0\nbad 3.0 -1.0\n")
    os.utime(file, ns=(1, 1))
    edited = load_vectors(f"glove:{file}")
    assert edited.words == ["good", "bad"] and float(edited.matrix[0, 0]) == 1.0
    # A damaged entry is ignored (parsed again), not trusted.
    (entry_dir("glove", file) / "words.json").write_text('["good"]')
    with caplog.at_level(logging.WARNING):
        again = load_vectors(f"glove:{file}")
    assert again.words == ["good", "bad"] and "damaged" in caplog.text
    repaired = load_vectors(f"glove:{file}")  # the parse replaced the damaged entry
    assert isinstance(repaired.matrix, np.memmap) and repaired.words == ["good", "bad"]


def test_unwritable_vector_cache_still_loads(tmp_path, monkeypatch, caplog):
    import logging

    file = tmp_path / "glove.txt"
    file.write_text("good 0.1 0.2\nbad 0.3 -0.1\n")
    blocked = tmp_path / "cache-is-a-file"
    blocked.write_text("")
    monkeypatch.setenv("NLPTRANSFER_CACHE_DIR", str(blocked))
    with caplog.at_level(logging.WARNING):
        vectors = load_vectors(f"glove:{file}")
    assert vectors.words == ["good", "bad"]
    assert "could not cache the converted vectors" in caplog.text
