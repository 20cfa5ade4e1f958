"""nlptransfer tune: the search space, trials with pruning, the report, and a study that resumes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import sentiment_frame

from nlptransfer import FinetuneConfig
from nlptransfer.errors import ConfigError
from nlptransfer.tuning import TuneConfig, run_tune, search_space
from nlptransfer.tuning.search import given_options
from nlptransfer.tuning.space import apply


def test_the_space_is_the_strategy_s_and_given_options_stay_fixed() -> None:
    names = lambda config, given=(): [p.name for p in search_space(config, 6, set(given))]  # noqa: E731
    assert names(FinetuneConfig(strategy="feature-extraction", head="logistic-cv")) == [
        "pooling",
        "top_layers",
    ]
    assert names(FinetuneConfig(strategy="finetune")) == [
        "learning_rate", "epochs", "body_lr_scale", "warmup_ratio", "unfreeze_layers",
    ]  # fmt: skip
    assert "lora_r" in names(FinetuneConfig(strategy="lora"))
    assert names(FinetuneConfig(strategy="finetune"), {"learning_rate", "unfreeze_layers"}) == [
        "epochs", "body_lr_scale", "warmup_ratio",
    ]  # fmt: skip
    assert given_options(FinetuneConfig(learning_rate=1e-3, seed=42)) == {"learning_rate"}
    assert apply({"top_layers": 2, "lora_r": 16, "unfreeze_layers": 6}, 6) == {
        "layers": [-2, -1], "layer_mix": "concat", "lora_r": 16, "lora_alpha": 32, "unfreeze_layers": None,
    }  # fmt: skip


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "train.csv"
    sentiment_frame(200).to_csv(path, index=False)
    return path


def test_a_search_runs_reports_and_resumes(tmp_path: Path, tiny_bert: str, data: Path) -> None:
    out = tmp_path / "tune"
    options = dict(model=tiny_bert, train_file=str(data), strategy="feature-extraction", head="linear",
                   batch_size=16, output_dir=str(out))  # fmt: skip
    report = run_tune(TuneConfig(**options, n_trials=4))
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["trial"] for r in rows] == ["0", "1", "2", "3"]
    assert {"learning_rate", "epochs", "head_dropout"} <= set(rows[0])
    assert all(r["state"] in ("complete", "pruned") for r in rows)
    best = json.loads((out / "best.json").read_text())
    complete = [float(r["value"]) for r in rows if r["state"] == "complete"]
    assert best["value"] == max(complete)
    assert "--learning_rate" in best["command"] and "--strategy feature-extraction" in best["command"]
    # Only the best trial keeps its model; every trial keeps its results.
    assert (Path(best["model"]) / "model.safetensors").is_file()
    kept = [p for p in (out / "trials").glob("trial-*/model.safetensors")]
    assert len(kept) == 1
    text = report.read_text()
    assert "Rerun it with" in text and "| trial | state |" in text and (out / "trials.png").is_file()
    # The same command with a larger budget continues the study.
    run_tune(TuneConfig(**options, n_trials=6))
    assert len(list(csv.DictReader((out / "trials.csv").open()))) == 6
    # Other options would make another study: refused, with the way out.
    with pytest.raises(ConfigError, match=r"holds a study run with other options.*weight_decay"):
        run_tune(TuneConfig(**options, n_trials=7, weight_decay=0.1))


def test_nothing_left_to_search_is_an_error(tmp_path: Path, tiny_bert: str, data: Path) -> None:
    config = TuneConfig(
        model=tiny_bert, train_file=str(data), strategy="feature-extraction", head="logistic-cv",
        pooling="cls", layers=[-1], output_dir=str(tmp_path / "t"),
    )  # fmt: skip
    with pytest.raises(ConfigError, match="Nothing to search"):
        run_tune(config)
