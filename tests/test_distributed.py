"""Two data-parallel CPU processes (gloo) through the same recipe."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import REPO, free_port, require_asset, run_script, sentiment_frame, torchrun


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
    assert report["weights_identical_across_processes"] is True
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


CONFIGS = sorted((REPO / "recipes" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_accelerate_config_loads_with_accelerates_own_reader(path: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.num_processes >= 1 and config.num_machines >= 1
    expected = {
        "fsdp": "FSDP",
        "deepspeed": "DEEPSPEED",
        "multi-gpu": "MULTI_GPU",
        "two-machines": "MULTI_GPU",
    }
    for prefix, kind in expected.items():
        if path.stem.startswith(prefix):
            assert kind in str(config.distributed_type)
    if path.stem == "two-machines":
        assert config.num_machines == 2 and config.main_process_ip


def test_the_cpu_accelerate_config_trains_with_two_processes(tiny_bert: str, tmp_path: Path) -> None:
    require_asset("accelerate")
    sentiment_frame(100).to_csv(tmp_path / "train.csv", index=False)
    config = REPO / "recipes" / "accelerate" / "cpu-2-processes.yaml"
    result = run_script(
        ["accelerate", "launch", "--config_file", str(config), "--main_process_port", str(free_port()),
         str(REPO / "recipes" / "finetune.py"), "--model", tiny_bert,
         "--train_file", str(tmp_path / "train.csv"), "--output_dir", str(tmp_path / "out"),
         "--epochs", "2", "--strategy", "finetune"]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((tmp_path / "out" / "results.json").read_text())["distributed"]
    assert report["num_processes"] == 2 and "MULTI_CPU" in report["distributed_type"]
    assert report["weights_identical_across_processes"] is True


def test_an_fsdp_config_on_cpu_says_accelerate_does_not_shard_there(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from nlptransfer.config import FinetuneConfig
    from nlptransfer.engine.context import build_accelerator

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets from fsdp.yaml
    with caplog.at_level("WARNING", logger="nlptransfer.engine.context"):
        accelerator = build_accelerator(FinetuneConfig())
    assert "FSDP" not in str(accelerator.distributed_type)
    assert "asks for FSDP, which accelerate runs only on GPUs" in caplog.text


def test_a_nan_loss_on_one_process_stops_every_process_at_the_same_read(
    tiny_bert: str, tmp_path: Path
) -> None:
    sentiment_frame(100).to_csv(tmp_path / "train.csv", index=False)
    out = tmp_path / "out"
    command = [*torchrun(2), str(REPO / "tests" / "nan_on_one_process.py"), "train",
               "--model", tiny_bert, "--train_file", str(tmp_path / "train.csv"), "--output_dir", str(out),
               "--epochs", "1", "--strategy", "finetune", "--batch_size", "4", "--logging_steps", "4",
               "--save_steps", "3"]  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NAN_AT_CALL", "5")  # rank 1's 5th batch: step 5, between the reads at 4 and 6
        done = run_script(command, timeout=300)  # a process left waiting would hang until the timeout
    assert done.returncode != 0
    # Rank 1 names its loss; rank 0, whose own losses were finite, the gradients all-reduced with
    # it: both skipped that update and every later one, and stop at the same read (step 6).
    assert "error: The loss became nan at step 5 (epoch 1, batch 5)" in done.stderr
    assert "error: The gradients became nan at step 5 (epoch 1, batch 5)" in done.stderr
    assert done.stderr.count("training stopped before that step changed the weights") == 2
    assert "The last good checkpoint is" in done.stderr and "checkpoint-3" in done.stderr
    assert not (out / "checkpoints" / "checkpoint-6").exists()
