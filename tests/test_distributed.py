"""Two data-parallel CPU processes (gloo) through the same recipe."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import REPO, free_port, require_asset, run_script, sentiment_frame


@pytest.mark.parametrize("strategy", ["feature-extraction", "finetune"])
def test_two_processes_share_the_work(tiny_bert: str, tmp_path: Path, strategy: str) -> None:
    sentiment_frame(200).to_csv(tmp_path / "train.csv", index=False)
    sentiment_frame(60, seed=1).to_csv(tmp_path / "test.csv", index=False)
    out = tmp_path / "out"
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    epochs = "20" if strategy == "feature-extraction" else "8"
    result = run_script(
        [
            *torchrun,
            str(REPO / "recipes" / "finetune.py"),
            "--model",
            tiny_bert,
            "--train_file",
            str(tmp_path / "train.csv"),
            "--test_file",
            str(tmp_path / "test.csv"),
            "--output_dir",
            str(out),
            "--strategy",
            strategy,
            "--epochs",
            epochs,
            "--batch_size",
            "8",
            "--learning_rate",
            "5e-3",
        ]
    )
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    report = results["distributed"]
    assert report["num_processes"] == 2
    assert "MULTI_CPU" in report["distributed_type"]
    per_process = report["train_examples_per_process"]
    assert all(n > 0 for n in per_process)
    # Each process saw its own shard: at most one padding batch is shared.
    assert report["examples_seen_by_several_processes"] <= 8
    assert report["train_examples_covered"] == report["num_train_examples"] == 180
    assert results["test"]["accuracy"] >= 0.8


def test_accelerate_launch_multi_cpu(tiny_bert: str, tmp_path: Path) -> None:
    require_asset("accelerate")
    sentiment_frame(100).to_csv(tmp_path / "train.csv", index=False)
    result = run_script(
        [
            "accelerate",
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--main_process_port",
            str(free_port()),
            str(REPO / "recipes" / "finetune.py"),
            "--model",
            tiny_bert,
            "--train_file",
            str(tmp_path / "train.csv"),
            "--output_dir",
            str(tmp_path / "out"),
            "--epochs",
            "2",
        ]
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((tmp_path / "out" / "results.json").read_text())["distributed"]
    assert report["num_processes"] == 2
    assert "MULTI_CPU" in report["distributed_type"]
    assert all(n > 0 for n in report["train_examples_per_process"])
    assert report["examples_seen_by_several_processes"] <= 32  # one padding batch at most
