"""End to end: the recipe, the `nlptransfer` command, and their errors, as a user runs them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import recipe, run_script, sentiment_frame

from nlptransfer import TransferModel
from nlptransfer.strategies.feature_extraction import FeatureExtraction


def nlptransfer_cli(*args: str):
    """Run the `nlptransfer` command in a fresh process, as a user would."""
    return run_script([sys.executable, "-m", "nlptransfer.cli", *args])


@pytest.fixture(scope="module")
def trained_run(tiny_bert: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    sentiment_frame(200).to_csv(folder / "train.csv", index=False)
    sentiment_frame(60, seed=1).to_csv(folder / "test.csv", index=False)
    out = folder / "out"
    result = run_script(
        recipe(
            "--model",
            tiny_bert,
            "--train_file",
            str(folder / "train.csv"),
            "--test_file",
            str(folder / "test.csv"),
            "--strategy",
            "feature-extraction",
            "--output_dir",
            str(out),
            "--epochs",
            "20",
            "--learning_rate",
            "5e-3",
            "--batch_size",
            "16",
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_recipe_writes_results_model_table_and_config(trained_run: Path) -> None:
    results = json.loads((trained_run / "results.json").read_text())
    for key in (
        "strategy",
        "model",
        "test",
        "validation",
        "train_seconds",
        "trainable_parameters",
        "total_parameters",
        "num_train_examples",
    ):
        assert key in results
    assert results["strategy"] == "feature-extraction"
    assert results["num_train_examples"] == 180  # 10% held out for validation
    assert results["trainable_parameters"] == 2 * 64 + 2  # linear head on two 32-d layers
    assert results["test"]["accuracy"] >= 0.8  # chance is 0.5; the words decide the label
    assert set(results["test"]) == {"accuracy", "f1_macro", "precision_macro", "recall_macro"}
    assert 0 < results["tokenize_seconds"] < results["train_seconds"]
    by_split = results["feature_extraction_seconds_by_split"]
    assert set(by_split) == {"train", "validation", "test"}  # a report can set the test set's share apart
    assert sum(by_split.values()) == pytest.approx(results["feature_extraction_seconds"], abs=0.01)
    assert "| head" in (trained_run / "trainable_layers.md").read_text()
    assert json.loads((trained_run / "run_config.json").read_text())["epochs"] == 20


def test_saved_run_loads_and_predicts(trained_run: Path) -> None:
    model = TransferModel.from_pretrained(trained_run)
    unseen = sentiment_frame(40, seed=9)
    predictions = model.predict(unseen["text"].tolist())
    assert (pd.Series(predictions.labels) == unseen["label"]).mean() >= 0.8


def test_predict_reads_texts_as_written(trained_run: Path, tmp_path: Path) -> None:
    # All numbers to pandas' type guessing, which would print 7.0, 10.0 and 100000.0.
    (tmp_path / "codes.csv").write_text("id,text\n1,007\n2,010\n3,1e5\n")
    result = nlptransfer_cli(
        "predict", "--model", str(trained_run), "--input_file", str(tmp_path / "codes.csv")
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert [line.split("\t")[2] for line in result.stdout.strip().splitlines()] == ["007", "010", "1e5"]


def test_predict_command_on_texts_and_files(trained_run: Path, tmp_path: Path) -> None:
    result = nlptransfer_cli("predict", "--model", str(trained_run), "--text", "superb wonderful film")
    assert result.returncode == 0, result.stderr[-2000:]
    expected = TransferModel.from_pretrained(trained_run).predict(["superb wonderful film"])
    label, score, text = result.stdout.strip().split("\t")
    assert (label, text) == (expected.labels[0], "superb wonderful film")
    assert float(score) == pytest.approx(float(expected.scores[0]), abs=1e-4)
    sentiment_frame(10, seed=3).to_csv(tmp_path / "new.csv", index=False)
    result = nlptransfer_cli(
        "predict",
        "--model",
        str(trained_run),
        "--input_file",
        str(tmp_path / "new.csv"),
        "--output_file",
        str(tmp_path / "p.csv"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    predicted = pd.read_csv(tmp_path / "p.csv")
    assert {"prediction", "score", "prob_neg", "prob_pos"} <= set(predicted.columns)
    assert (predicted["prediction"] == predicted["label"]).mean() >= 0.8


def test_output_dir_with_a_run_is_refused(trained_run: Path, tiny_bert: str) -> None:
    train = str(trained_run.parent / "train.csv")
    args = ["--model", tiny_bert, "--train_file", train, "--output_dir", str(trained_run), "--epochs", "1"]
    refused = run_script(recipe(*args))
    assert refused.returncode == 2
    assert "already holds a run" in refused.stderr and "--overwrite_output_dir" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_failed_overwrite_keeps_the_earlier_run(tiny_bert: str, tmp_path: Path) -> None:
    sentiment_frame(60).to_csv(tmp_path / "train.csv", index=False)
    out = tmp_path / "out"
    args = ["--model", tiny_bert, "--train_file", str(tmp_path / "train.csv"), "--output_dir", str(out)]
    assert run_script(recipe(*args, "--epochs", "1")).returncode == 0
    (out / "notes.txt").write_text("mine")
    failed = run_script(recipe(*args, "--overwrite_output_dir", "--text_column", "nope"))
    assert failed.returncode == 2
    assert (out / "results.json").is_file()
    assert TransferModel.from_pretrained(out).labels == ["neg", "pos"]
    assert (out / "notes.txt").read_text() == "mine"


def test_folder_of_unrelated_files_is_never_used(tiny_bert: str, tmp_path: Path) -> None:
    sentiment_frame(40).to_csv(tmp_path / "train.csv", index=False)
    args = ["--model", tiny_bert, "--train_file", str(tmp_path / "train.csv"), "--output_dir", str(tmp_path)]
    result = run_script(recipe(*args, "--overwrite_output_dir"))
    assert result.returncode == 2
    assert "holds no earlier run" in result.stderr
    assert (tmp_path / "train.csv").is_file()


def test_overwrite_replaces_the_run(tiny_bert: str, tmp_path: Path) -> None:
    sentiment_frame(60).to_csv(tmp_path / "train.csv", index=False)
    out = tmp_path / "out"
    args = ["--model", tiny_bert, "--train_file", str(tmp_path / "train.csv"), "--output_dir", str(out)]
    assert run_script(recipe(*args, "--epochs", "1")).returncode == 0
    (out / "notes.txt").write_text("mine")
    again = run_script(recipe(*args, "--epochs", "2", "--overwrite_output_dir"))
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((out / "results.json").read_text())["config"]["epochs"] == 2
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files are replaced


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--strategy", "fine-tune"], "Did you mean 'finetune'"),
        (["--text_column", "review"], "Columns that exist: 'text', 'label'"),
        (["--train_file", "missing.csv"], "does not exist"),
        (["--model", "./no/such/model"], "does not exist"),
        (["--metrics", "accuracy", "f1"], "Did you mean 'f1_macro'"),
        (["--metric_for_best_model", "f1_macro", "--metrics", "accuracy"], "is not among --metrics"),
    ],
)
def test_bad_input_ends_in_one_clear_line(
    tiny_bert: str, tmp_path: Path, extra: list[str], message: str
) -> None:
    sentiment_frame(40).to_csv(tmp_path / "train.csv", index=False)
    args = [
        "--model",
        tiny_bert,
        "--train_file",
        str(tmp_path / "train.csv"),
        "--output_dir",
        str(tmp_path / "o"),
    ]
    result = run_script(recipe(*args, *extra))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_layers_command_prints_the_table(tiny_bert: str) -> None:
    result = nlptransfer_cli(
        "layers", "--model", tiny_bert, "--strategy", "finetune", "--unfreeze_layers", "1"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {
        line.split("|")[1].strip(): line.split("|")[3].strip() for line in result.stdout.splitlines()[2:-1]
    }
    assert rows == {
        "backbone.embeddings": "no",
        "backbone.encoder.layer.0": "no",
        "backbone.encoder.layer.1": "yes",
        "head": "yes",
    }


def test_same_seed_gives_identical_metrics(tiny_bert: str, tmp_path: Path) -> None:
    sentiment_frame(80).to_csv(tmp_path / "train.csv", index=False)
    results = []
    for name in ("a", "b"):
        args = [
            "--model",
            tiny_bert,
            "--train_file",
            str(tmp_path / "train.csv"),
            "--strategy",
            "finetune",
            "--epochs",
            "1",
            "--output_dir",
            str(tmp_path / name),
            "--seed",
            "7",
        ]
        assert run_script(recipe(*args)).returncode == 0
        results.append(json.loads((tmp_path / name / "results.json").read_text()))
    assert results[0]["history"] == results[1]["history"]


def test_results_record_seed_versions_device_and_resolved_options(tiny_bert: str, tmp_path: Path) -> None:
    sentiment_frame(40).to_csv(tmp_path / "train.csv", index=False)
    out = tmp_path / "out"
    args = ["--model", tiny_bert, "--train_file", str(tmp_path / "train.csv"), "--output_dir", str(out),
            "--strategy", "feature-extraction", "--epochs", "1", "--seed", "3"]  # fmt: skip
    result = run_script(recipe(*args))
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["seed"] == 3
    versions = results["versions"]
    assert {"python", "torch", "transformers", "accelerate", "peft", "numpy", "safetensors"} <= set(versions)
    machine = results["hardware"]
    assert machine["device"].split(":")[0] in ("cpu", "cuda") and machine["num_processes"] == "1"
    # Left unset, learning rate and patience are the strategy's defaults: results.json says which.
    assert results["config"]["learning_rate"] is None
    default = (FeatureExtraction.default_learning_rate, 1, FeatureExtraction.default_patience)
    assert isinstance(default[0], float) and default[2] is not None
    resolved = results["resolved"]
    assert (resolved["learning_rate"], resolved["epochs"], resolved["early_stopping_patience"]) == default
    phase = results["phases"][0]
    assert (phase["learning_rate"], phase["epochs"], phase["patience"]) == default
    card = (out / "README.md").read_text()
    assert f"{machine['device']}, 1 process(es)" in card and f"- peft {versions['peft']}" in card
    assert "device" not in versions and "- device" not in card
