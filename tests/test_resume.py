"""Killed, interrupted and multi-process runs resume to exactly the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate.utils import is_tensorboard_available
from conftest import REPO, run_script, sentiment_split, torchrun
from safetensors.torch import load_file

from nlptransfer.engine.checkpoint import complete_checkpoints, read_checkpoint

# 180 training examples at batch 4: 45 optimizer steps per epoch, a checkpoint every 5.
STEPS_PER_EPOCH = 45


def _flags(model: str, data: Path, out: Path, recipe: str) -> list[str]:
    common = ["--model", model, "--train_file", str(data / "train.csv"), "--output_dir", str(out), "--epochs",
              "2", "--batch_size", "4", "--save_steps", "5", "--save_total_limit", "3"]  # fmt: skip
    if recipe == "finetune":
        return [
            *common,
            "--test_file",
            str(data / "test.csv"),
            "--strategy",
            "finetune",
            "--learning_rate",
            "5e-3",
        ]
    return [*common, "--heldout_split", "0.1", "--learning_rate", "1e-3"]


def _command(recipe: str, flags: list[str], processes: int = 1) -> list[str]:
    script = str(REPO / "recipes" / f"{recipe}.py")
    if processes == 1:
        return [sys.executable, script, *flags]
    return [*torchrun(processes), script, *flags]


def _start(command: list[str]) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def _wait_for_checkpoint(process: subprocess.Popen, out: Path, step: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(int(p.name.split("-")[1]) >= step for p in complete_checkpoints(out)):
            return
        if process.poll() is not None:
            pytest.fail(f"the run ended before checkpoint {step}: {process.stderr.read()[-3000:]}")
        time.sleep(0.01)
    pytest.fail(f"no checkpoint {step} after {timeout} s")


def _same_weights(a: Path, b: Path) -> None:
    left, right = load_file(str(a)), load_file(str(b))
    assert left.keys() == right.keys()
    for name in left:
        # Bitwise on CPU: same kernels, same order of operations, same RNG draws.
        assert torch.equal(left[name], right[name]), name


def _same_results(a: Path, b: Path, keys: tuple[str, ...]) -> None:
    left, right = (json.loads((p / "results.json").read_text()) for p in (a, b))
    for key in keys:
        assert left[key] == right[key], key


RESULT_KEYS = {"finetune": ("test", "validation", "history", "best_epoch"), "pretrain": ("history",)}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sentiment_split(tmp_path_factory.mktemp("resume-data"))


@pytest.fixture(scope="module")
def reference(tiny_bert: str, data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Uninterrupted runs of each recipe, to compare resumed runs with."""
    runs = {}
    for recipe in ("finetune", "pretrain"):
        out = tmp_path_factory.mktemp("reference") / recipe
        done = run_script(_command(recipe, _flags(tiny_bert, data, out, recipe)))
        assert done.returncode == 0, done.stderr[-3000:]
        runs[recipe] = out
    return runs


@pytest.mark.parametrize("recipe", ["finetune", "pretrain"])
def test_a_run_killed_mid_epoch_resumes_to_identical_weights_and_metrics(
    recipe: str, tiny_bert: str, data: Path, reference: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    flags = _flags(tiny_bert, data, out, recipe)
    process = _start(_command(recipe, flags))
    _wait_for_checkpoint(process, out, 10)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    latest = read_checkpoint(complete_checkpoints(out)[-1])
    assert latest.progress.epoch == 1 and 0 < latest.progress.batch < STEPS_PER_EPOCH  # mid-epoch
    assert not (out / "results.json").exists()

    resumed = run_script(_command(recipe, [*flags, "--resume_from_checkpoint", "latest"]))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _same_results(reference[recipe], out, RESULT_KEYS[recipe])
    weights = "model.safetensors"
    _same_weights(reference[recipe] / weights, out / weights)
    # The weights after the very last step too (the saved model may be an earlier best epoch).
    last = f"checkpoints/checkpoint-{2 * STEPS_PER_EPOCH}/model.safetensors"
    _same_weights(reference[recipe] / last, out / last)
    # The training log reads as one run: no step logged twice.
    steps = [json.loads(line).get("train/loss") and json.loads(line)["step"]
             for line in (out / "training_log.jsonl").read_text().splitlines()]  # fmt: skip
    logged = [s for s in steps if s]
    assert logged == sorted(set(logged))


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_saves_a_checkpoint_and_says_how_to_resume(
    sig: int, code: int, tiny_bert: str, data: Path, reference: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "interrupted"
    flags = _flags(tiny_bert, data, out, "finetune")
    process = _start(_command("finetune", flags))
    _wait_for_checkpoint(process, out, 5)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr[-3000:]
    assert "--resume_from_checkpoint latest" in stderr and "checkpoint saved in" in stderr
    assert "Traceback" not in stderr
    saved = read_checkpoint(complete_checkpoints(out)[-1])
    assert saved.progress.global_step % 5 != 0 or saved.progress.batch > 0  # saved where it stopped
    resumed = run_script(_command("finetune", [*flags, "--resume_from_checkpoint", "latest"]))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _same_results(reference["finetune"], out, RESULT_KEYS["finetune"])


def test_two_processes_resume_to_the_uninterrupted_result(tiny_bert: str, data: Path, tmp_path: Path) -> None:
    ref, out = tmp_path / "reference", tmp_path / "killed"
    done = run_script(_command("finetune", _flags(tiny_bert, data, ref, "finetune"), processes=2))
    assert done.returncode == 0, done.stderr[-3000:]
    flags = _flags(tiny_bert, data, out, "finetune")
    process = _start(_command("finetune", flags, processes=2))
    _wait_for_checkpoint(process, out, 10)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    latest = read_checkpoint(complete_checkpoints(out)[-1])
    assert latest.progress.num_processes == 2 and (latest.path / "random_states_1.pkl").is_file()

    one = run_script(_command("finetune", [*flags, "--resume_from_checkpoint", "latest"]))
    assert one.returncode == 2 and "--num_processes 2" in one.stderr

    resumed = run_script(_command("finetune", [*flags, "--resume_from_checkpoint", "latest"], processes=2))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _same_results(ref, out, RESULT_KEYS["finetune"])
    _same_weights(ref / "model.safetensors", out / "model.safetensors")


def test_resuming_with_other_options_is_refused(
    tiny_bert: str, data: Path, reference: dict[str, Path]
) -> None:
    checkpoint = complete_checkpoints(reference["finetune"])[-1]
    flags = _flags(tiny_bert, data, reference["finetune"], "finetune")
    changed = [*flags, "--batch_size", "8", "--resume_from_checkpoint", str(checkpoint)]
    done = run_script(_command("finetune", changed))
    assert done.returncode == 2
    assert "--batch_size 4 -> 8" in done.stderr and "Traceback" not in done.stderr


def test_an_unfinished_run_is_not_overwritten_by_accident(tiny_bert: str, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "unfinished"
    (out / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    done = run_script(_command("finetune", _flags(tiny_bert, data, out, "finetune")))
    assert done.returncode == 2 and "--resume_from_checkpoint latest" in done.stderr


def test_a_finished_run_has_its_log_curves_and_model_card(reference: dict[str, Path]) -> None:
    out = reference["finetune"]
    records = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train/loss" in r]
    assert steps and all(r["train/learning_rate"] >= 0 and r["train/examples_per_second"] > 0 for r in steps)
    assert [r["step"] for r in records if "validation/accuracy" in r] == [
        STEPS_PER_EPOCH,
        2 * STEPS_PER_EPOCH,
    ]
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: nlptransfer" in card
    assert "--strategy finetune" in card and "| test |" in card and "Trainable parameters" in card
    assert len(complete_checkpoints(out)) == 3  # --save_total_limit 3
    if is_tensorboard_available():
        assert list((out / "logs").rglob("events.out.tfevents.*"))


@pytest.mark.parametrize("strategy", ["feature-extraction", "lora"])
def test_checkpoints_hold_only_what_trained(
    strategy: str, tiny_bert: str, data: Path, tmp_path: Path
) -> None:
    from nlptransfer.config import FinetuneConfig
    from nlptransfer.runs.finetune import train

    out = tmp_path / strategy
    config = FinetuneConfig(model=tiny_bert, train_file=str(data / "train.csv"), strategy=strategy, epochs=1,
                            output_dir=str(out), report_to=["none"])  # fmt: skip
    train(config)
    saved = load_file(str(complete_checkpoints(out)[-1] / "model.safetensors"))
    full = load_file(str(out / "model.safetensors"))
    assert saved and len(saved) < len(full) / 4  # the frozen body (or LoRA's base) is left out
    assert all(name.startswith("head.") or "lora_" in name for name in saved)


def test_two_processes_on_stored_activations_resume_to_the_whole_body_result(
    tiny_bert: str, data: Path, tmp_path: Path
) -> None:
    """Top-1 fine-tuning on the activation cache: its states sharded over two processes, the run
    killed and resumed, ends where two processes running the whole body every batch end."""
    ref, out = tmp_path / "whole-body", tmp_path / "killed"
    partial = ["--unfreeze_layers", "1", "--cache_dir", str(tmp_path / "cache")]
    flags = [*_flags(tiny_bert, data, ref, "finetune"), *partial, "--no-activation_cache"]
    done = run_script(_command("finetune", flags, processes=2))
    assert done.returncode == 0, done.stderr[-3000:]
    flags = [*_flags(tiny_bert, data, out, "finetune"), *partial]
    process = _start(_command("finetune", flags, processes=2))
    _wait_for_checkpoint(process, out, 10)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    resumed = run_script(_command("finetune", [*flags, "--resume_from_checkpoint", "latest"], processes=2))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    (phase,) = results["activation_cache"]["phases"]
    assert phase["used"] and phase["block"] == 1 and all(phase["hits"].values())  # stored before the kill
    expected = json.loads((ref / "results.json").read_text())
    assert results["test"] == pytest.approx(expected["test"], abs=1e-6)
    losses = [[h["train_loss"] for h in r["history"]] for r in (results, expected)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    left, right = (load_file(str(d / "model.safetensors")) for d in (out, ref))
    for name in left:
        torch.testing.assert_close(left[name], right[name], atol=1e-6, rtol=0, msg=name)
