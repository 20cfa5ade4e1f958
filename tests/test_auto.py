"""--strategy auto and the options a run leaves unset: what is chosen, why, and what the run does."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import sentiment_frame

from nlptransfer import FinetuneConfig, TransferModel, train
from nlptransfer.advisor.auto import resolve_auto
from nlptransfer.data import load_data
from nlptransfer.errors import ConfigError
from nlptransfer.model.heads import LinearHead, fit_logistic_head, out_of_fold_logits
from nlptransfer.runs.finetune import load_source
from nlptransfer.tasks.setup import configure_task


def _resolve(tiny_bert: str, csv: Path, resumed: dict | None = None, started: float | None = None, **options):
    config = FinetuneConfig(model=tiny_bert, train_file=str(csv), **options)
    data = load_data(config.data)
    config, task, _ = configure_task(config, data)
    backbone = load_source(config, data.train.inputs, data.modality)
    return resolve_auto(config, data, task, backbone, resumed, started)


def _csv(tmp_path: Path, n: int, name: str = "train.csv") -> Path:
    path = tmp_path / name
    sentiment_frame(n).to_csv(path, index=False)
    return path


def test_defaults_are_auto_and_bad_values_are_named() -> None:
    config = FinetuneConfig()
    assert (config.strategy, config.head, config.protocol, config.time_budget_minutes) == (
        "auto",
        None,
        "auto",
        5.0,
    )
    assert FinetuneConfig(head="auto").head is None
    with pytest.raises(ConfigError, match="--time_budget_minutes must be >= 0"):
        FinetuneConfig(time_budget_minutes=-1)
    with pytest.raises(ConfigError, match="--protocol must be one of auto, holdout, cross-validation"):
        FinetuneConfig(protocol="kfold")


def test_small_data_gets_contrastive_pairs_a_closed_form_head_and_cross_validation(
    tmp_path: Path, tiny_bert: str
) -> None:
    config, data, choice = _resolve(tiny_bert, _csv(tmp_path, 120))
    assert (config.strategy, config.head, config.protocol, config.pair_sampling) == (
        "contrastive",
        "logistic-cv",
        "cross-validation",
        "in-batch",
    )
    assert choice.chosen["strategy"] == "contrastive" and choice.chosen["protocol"] == "cross-validation"
    assert "epochs" not in choice.chosen and "batch_size" not in choice.chosen  # its own schedule
    # The validation examples join the training data; nothing is held out.
    assert data.validation is None and len(data.train) == 120
    text = choice.render()
    assert "small data" in text and "logistic-cv head" in text and "protocol cross-validation" in text
    assert choice.measurements["num_train"] == 108 and choice.measurements["min_per_label"] == 54


def test_a_large_enough_validation_split_is_kept(tmp_path: Path, tiny_bert: str) -> None:
    config, data, _ = _resolve(tiny_bert, _csv(tmp_path, 600))  # 30 validation examples per class
    assert config.protocol == "holdout" and data.validation is not None and len(data.validation) == 60


def test_every_given_option_wins(tmp_path: Path, tiny_bert: str) -> None:
    csv = _csv(tmp_path, 120)
    config, _, choice = _resolve(tiny_bert, csv, strategy="feature-extraction", epochs=4)
    # --epochs asks for gradient training: a linear head, and the held-out protocol it needs.
    assert (config.head, config.epochs, config.protocol) == ("linear", 4, "holdout")
    assert "--epochs asks for gradient training" in choice.render()
    # Contrastive's --epochs count its pair epochs: the head stays closed-form.
    config, _, _ = _resolve(tiny_bert, csv, epochs=4)
    assert (config.strategy, config.head, config.epochs) == ("contrastive", "logistic-cv", 4)
    config, _, choice = _resolve(tiny_bert, csv, head="linear", protocol="holdout")
    assert (config.head, config.protocol) == ("linear", "holdout") and "head" not in choice.chosen
    config, _, _ = _resolve(tiny_bert, csv, strategy="finetune", unfreeze_layers=1)
    assert (config.strategy, config.unfreeze_layers, config.head) == ("finetune", 1, "linear")


def test_a_given_strategy_gets_enough_steps(tmp_path: Path, tiny_bert: str) -> None:
    # 800 examples, batch 32: 23 steps per epoch; the default 2 epochs would stop at 46 steps.
    config, _, choice = _resolve(tiny_bert, _csv(tmp_path, 800), strategy="finetune", unfreeze_layers=2)
    steps = config.epochs * -(-720 // config.batch_size)
    assert config.batch_size == 32 and steps >= 250 and config.early_stopping_patience == 5
    assert choice.chosen["epochs"] == config.epochs and "give few optimizer steps" in choice.render()


def test_large_data_fine_tunes_when_the_budget_allows(tmp_path: Path, tiny_bert: str) -> None:
    csv = _csv(tmp_path, 2400)  # 1,080 training examples per class: "large"
    config, _, choice = _resolve(tiny_bert, csv, time_budget_minutes=0)
    assert (config.strategy, config.head, config.body_lr_scale) == ("finetune", "linear", 0.1)
    assert choice.estimated_seconds is not None and choice.estimated_seconds > 0
    # A budget the estimate cannot meet gives way to the frozen body, and says so.
    config, _, choice = _resolve(tiny_bert, csv, time_budget_minutes=1e-4)
    assert config.strategy == "feature-extraction" and config.head == "logistic-cv"
    assert any("compute:" in reason and "left to train" in reason for reason in choice.reasons)
    assert any(reason.startswith("budget: 0 s for the whole run") for reason in choice.reasons)


def test_fine_tuning_runs_fewer_epochs_when_that_fits_the_budget(
    tmp_path: Path, tiny_bert: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nlptransfer.advisor import auto
    from nlptransfer.advisor.compute import ArmCost, ComputeProfile

    def estimate(base, config, data, arms):  # 8,100 examples: 2 epochs ~ 82 s, 1 epoch ~ 41 s
        costs = {"feature-extraction": ArmCost("feature-extraction", 0, 1, 0.001, 0.001, True),
                 "finetune": ArmCost("finetune", 1, 1, 0.005, 0.001, False)}  # fmt: skip
        return ComputeProfile("cpu", 2, costs)

    monkeypatch.setattr(auto, "estimate_compute", estimate)
    csv = _csv(tmp_path, 9000)  # 4,050 training examples per class, 254 steps of 32 per epoch
    config, _, choice = _resolve(tiny_bert, csv, time_budget_minutes=1)
    assert (config.strategy, config.epochs, config.body_lr_scale) == ("finetune", 1, 0.1)
    assert choice.chosen["epochs"] == 1 and "1 epoch fits" in choice.render()
    config, _, _ = _resolve(tiny_bert, csv, time_budget_minutes=0.5)  # not even one epoch fits
    assert config.strategy == "feature-extraction"
    # The budget is the whole run's: 20 s spent loading leave 57 - 20 - 1 (testing) < 41 s to train.
    config, _, choice = _resolve(tiny_bert, csv, started=time.time() - 20, time_budget_minutes=1)
    assert config.strategy == "feature-extraction"
    budget = next(r for r in choice.reasons if r.startswith("budget: 60 s for the whole run leaves"))
    assert 33 <= int(re.search(r"leaves (\d+) s", budget).group(1)) <= 37, budget
    config, _, _ = _resolve(tiny_bert, csv, started=time.time(), time_budget_minutes=1)
    assert (config.strategy, config.epochs) == ("finetune", 1)


def test_the_estimate_charges_the_mean_length_not_the_longest_text_of_a_batch(
    tmp_path: Path, tiny_bert: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clock that charges each forward pass by its padded tokens: the estimate is the training
    texts' mean length at that rate (what length-grouped training pads to), however long the one
    text that pads a random batch."""
    from types import SimpleNamespace

    from nlptransfer.advisor import compute
    from nlptransfer.advisor.arms import get_arm
    from nlptransfer.data.loaders import example_length
    from nlptransfer.engine.inference import encode_split

    path = tmp_path / "mixed.csv"
    frame = sentiment_frame(300)
    frame.loc[::10, "text"] = frame.loc[::10, "text"] + " filler words" * 20  # one text in ten is long
    frame.to_csv(path, index=False)
    config = FinetuneConfig(model=tiny_bert, train_file=str(path))
    data = load_data(config.data)
    config, task, _ = configure_task(config, data)
    base = TransferModel.from_backbone(
        load_source(config, data.train.inputs, data.modality), data.label_names, task=task
    )
    clock = [0.0]
    forward = TransferModel.forward

    def charged(self, *args, **kwargs):
        clock[0] += 1e-6 * kwargs["input_ids"].numel()
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(TransferModel, "forward", charged)
    monkeypatch.setattr(compute, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    arms = [get_arm("feature-extraction"), get_arm("finetune")]
    costs = compute.estimate_compute(base, config, data, arms).costs
    lengths = [example_length(e) for e in encode_split(base, data.train)]
    per_example = 1e-6 * float(np.mean(lengths))
    assert costs["feature-extraction"].eval_seconds_per_example == pytest.approx(per_example)
    assert costs["finetune"].train_seconds_per_example == pytest.approx(
        compute.TRAIN_PASSES_PER_FORWARD * per_example
    )
    assert per_example < 0.5 * 1e-6 * max(lengths)  # a random batch pads to its longest text


def test_a_resumed_run_keeps_the_strategy_it_chose(tmp_path: Path, tiny_bert: str) -> None:
    saved = dataclasses.asdict(FinetuneConfig(strategy="finetune", epochs=3, body_lr_scale=0.1))
    config, _, choice = _resolve(tiny_bert, _csv(tmp_path, 120), resumed=saved)
    assert (config.strategy, config.epochs, config.head) == ("finetune", 3, "linear")
    assert "resumed" in choice.render()


def test_pairs_are_encoded_apart_for_a_frozen_body_and_joined_for_a_trained_one(
    tmp_path: Path, tiny_bert: str
) -> None:
    path = tmp_path / "pairs.csv"
    frame = sentiment_frame(120)
    frame.assign(text_pair=frame["text"].iloc[::-1].to_numpy()).to_csv(path, index=False)
    frozen, _, _ = _resolve(tiny_bert, path, text_pair_column="text_pair")
    trained, _, _ = _resolve(tiny_bert, path, text_pair_column="text_pair", strategy="finetune")
    assert (frozen.pair_encoding, trained.pair_encoding) == ("separate", "joint")


def test_long_texts_are_chunked(tmp_path: Path, tiny_bert: str) -> None:
    path = tmp_path / "long.csv"
    frame = sentiment_frame(120)
    frame["text"] = frame["text"] + (" filler words" * 40)
    frame.to_csv(path, index=False)
    config, _, choice = _resolve(tiny_bert, path, max_length=32)
    assert config.long_text == "chunk" and "chunking reads them whole" in choice.render()
    assert _resolve(tiny_bert, _csv(tmp_path, 120), max_length=32)[0].long_text == "truncate"


def test_cross_validation_needs_a_closed_form_head(tmp_path: Path, tiny_bert: str) -> None:
    with pytest.raises(ConfigError, match="--protocol cross-validation fits a closed-form head"):
        _resolve(tiny_bert, _csv(tmp_path, 120), protocol="cross-validation", strategy="finetune")


def test_out_of_fold_outputs_are_honest_about_noise() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(120, 40)).astype(np.float32)
    labels = rng.integers(0, 2, 120)  # nothing to learn
    head = LinearHead(40, 2)
    fit_logistic_head(head, features, labels, seed=0)
    logits = out_of_fold_logits(features, labels, head, seed=0)
    assert logits.shape == (120, 2)
    np.testing.assert_allclose(np.exp(logits).sum(1), 1.0, rtol=1e-5)
    assert abs((logits.argmax(1) == labels).mean() - 0.5) < 0.15  # out-of-fold: chance, not a fit


def test_a_default_run_end_to_end(tmp_path: Path, tiny_bert: str) -> None:
    csv, test = _csv(tmp_path, 120), _csv(tmp_path, 60, "test.csv")
    out = tmp_path / "run"
    results = train(FinetuneConfig(model=tiny_bert, train_file=str(csv), test_file=str(test),
                                   output_dir=str(out), report_to=["none"]))  # fmt: skip
    assert results["strategy"] == "contrastive" and results["protocol"] == "cross-validation"
    assert results["num_validation_examples"] == 0 and results["num_train_examples"] == 120
    assert results["auto"]["chosen"]["head"] == "logistic-cv"
    assert results["validation"]["accuracy"] > 0.8 and results["test"]["accuracy"] > 0.8
    saved = json.loads((out / "results.json").read_text())
    assert saved["auto"] == results["auto"]
    card = (out / "README.md").read_text()
    assert "Chosen by auto" in card and "cross-validation" in card
    model = TransferModel.from_pretrained(out)
    assert model.predict(["good great fine"]).labels[0] in ("pos", "neg")


def test_a_cross_validated_regression_end_to_end(tmp_path: Path, tiny_bert: str) -> None:
    path = tmp_path / "scores.csv"
    frame = sentiment_frame(100)
    noise = np.random.default_rng(0).normal(0, 0.1, len(frame))
    frame.assign(score=(frame["label"] == "pos") * 2.0 + noise).to_csv(path, index=False)
    results = train(FinetuneConfig(model=tiny_bert, train_file=str(path), label_column="score",
                                   output_dir=str(tmp_path / "run"), report_to=["none"]))  # fmt: skip
    assert results["problem_type"] == "regression" and results["protocol"] == "cross-validation"
    assert results["auto"]["chosen"]["head"] == "ridge-cv"
    # No test split: the per-target table is of the out-of-fold predictions.
    assert results["per_label"]["split"] == "validation" and results["validation"]["spearman"] > 0.5


def test_the_multi_class_corpus() -> None:
    data = load_data(FinetuneConfig(dataset="moral-foundations").data)
    assert data.label_names == ["authority", "care", "fairness", "loyalty", "sanctity"]
    assert len(data.train) + len(data.validation) + len(data.test) == 1989
    assert pd.Series(data.train.inputs).is_unique


def test_compare_measures_auto_against_the_other_arms(tmp_path: Path, tiny_bert: str) -> None:
    from nlptransfer.cli import main

    sentiment_frame(120).to_csv(tmp_path / "train.csv", index=False)
    out = tmp_path / "compare"
    argv = ["compare", "--model", tiny_bert, "--train_file", str(tmp_path / "train.csv"), "--output_dir",
            str(out), "--arms", "feature-extraction", "auto", "--budgets", "8", "--seeds", "0",
            "--batch_size", "8", "--min_steps", "4", "--probe_steps", "1",
            "--familiarity_examples", "10"]  # fmt: skip
    assert main(argv) == 0
    cells = {c["arm"]: c for c in json.loads((out / "cells.json").read_text())}
    # Compare keeps its validation protocol (K per label) for every arm, auto included.
    assert "--strategy contrastive --head logistic-cv" in cells["auto"]["auto"]
    assert cells["feature-extraction"]["auto"] == "--head linear"  # compare's own schedule: gradient
    report = (out / "report.md").read_text()
    assert "## `--strategy auto` against the measured best" in report
    assert "--head logistic-cv" in report


def test_a_given_head_or_layer_count_decides_the_strategy(tmp_path: Path, tiny_bert: str) -> None:
    csv = _csv(tmp_path, 2400)  # large enough that auto would fine-tune
    config, _, choice = _resolve(tiny_bert, csv, time_budget_minutes=0, head="logistic-cv")
    assert config.strategy == "feature-extraction" and "fits on frozen features" in choice.render()
    config, _, _ = _resolve(tiny_bert, _csv(tmp_path, 120), unfreeze_layers=1)
    assert (config.strategy, config.unfreeze_layers) == ("finetune", 1)
