"""Faults during a run: a full disk while saving, a loss or gradients that become NaN.

Each fault is injected where the real one would strike (the function that writes
the files, the loss of one batch); the tests check the error the user gets, that
what was saved before is still valid, and that the run resumes from it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import accelerate
import pytest
import torch
from conftest import run_script, sentiment_frame

import nlptransfer.engine.checkpoint
from nlptransfer.config import FinetuneConfig
from nlptransfer.engine.checkpoint import (
    CHECKPOINTS_DIR,
    Checkpointer,
    complete_checkpoints,
    resolve_checkpoint,
)
from nlptransfer.engine.loop import TrainSession, optimizer_step
from nlptransfer.errors import SaveError, TrainingError, TrainingInterrupted
from nlptransfer.runs.finetune import train
from nlptransfer.runs.outputs import RESULTS_NAME, RUN_CONFIG_NAME, TABLE_NAME, write_run
from nlptransfer.tasks.base import SingleLabelClassification

FULL_DISK = OSError(errno.ENOSPC, "No space left on device")


def fail_on_call(original: Callable[..., Any], call: int) -> Callable[..., Any]:
    """``original``, except that its ``call``-th call writes part of its output, then finds the disk full.

    Both writers patched here take their destination second: ``save_state(self, folder)``
    and ``save_file(tensors, filename)``.
    """
    calls = []

    def writer(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        if len(calls) == call:
            target = Path(args[1])
            (target / "model.safetensors" if target.is_dir() else target).write_bytes(b"partial")
            raise FULL_DISK
        return original(*args, **kwargs)

    return writer


@pytest.fixture
def config(tiny_bert: str, tmp_path: Path) -> FinetuneConfig:
    """A one-epoch run: 54 training examples at batch 4 are 14 optimizer steps, a checkpoint every 5."""
    sentiment_frame(60).to_csv(tmp_path / "train.csv", index=False)
    return FinetuneConfig(
        model=tiny_bert, train_file=str(tmp_path / "train.csv"), output_dir=str(tmp_path / "out"),
        strategy="feature-extraction", epochs=1, batch_size=4, save_steps=5,
    )  # fmt: skip


def _resumes_from(config: FinetuneConfig, checkpoint: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="nlptransfer.engine.loop")
    results = train(replace(config, resume_from_checkpoint="latest"))
    assert f"resumed from {checkpoint}" in caplog.text
    assert results["epochs_run"] == 1
    assert (Path(config.output_dir) / RESULTS_NAME).is_file()


# ---------------------------------------------------------------- full disk while saving


@pytest.mark.parametrize(
    ("owner", "name"),
    [(accelerate.Accelerator, "save_state"), (nlptransfer.engine.checkpoint, "save_file")],
    ids=["accelerate-state", "best-epoch-weights"],
)
def test_a_full_disk_at_the_second_checkpoint_keeps_the_first_and_resumes(
    config: FinetuneConfig, owner: Any, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    out = Path(config.output_dir)
    first = out / CHECKPOINTS_DIR / "checkpoint-5"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(owner, name, fail_on_call(getattr(owner, name), call=2))
        with pytest.raises(SaveError) as info:
            train(config)
    message = str(info.value)
    assert message.startswith(f"Could not write checkpoint 10 to {out / CHECKPOINTS_DIR}: ")
    assert "No space left on device" in message
    assert f"the latest valid one is {first}" in message
    assert "--resume_from_checkpoint latest" in message
    assert not list((out / CHECKPOINTS_DIR).glob(".tmp-*"))
    assert complete_checkpoints(out) == [first]
    assert resolve_checkpoint("latest", out) == first
    assert not (out / RESULTS_NAME).exists()
    _resumes_from(config, first, caplog)


def test_the_recipe_on_a_full_disk_ends_in_one_clear_line(config: FinetuneConfig) -> None:
    inject = (
        "import errno, sys\n"
        "import accelerate\n"
        "from nlptransfer.cli import run_recipe\n"
        "original, calls = accelerate.Accelerator.save_state, []\n"
        "def save_state(self, *args, **kwargs):\n"
        "    calls.append(args)\n"
        "    if len(calls) == 2:\n"
        "        raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "    return original(self, *args, **kwargs)\n"
        "accelerate.Accelerator.save_state = save_state\n"
        "sys.exit(run_recipe('train', sys.argv[1:]))\n"
    )
    args = ["--model", config.model, "--train_file", config.train_file, "--output_dir", config.output_dir,
            "--strategy", config.strategy, "--epochs", "1", "--batch_size", "4",
            "--save_steps", "5"]  # fmt: skip
    result = run_script([sys.executable, "-c", inject, *args])
    assert result.returncode == 2, result.stderr[-3000:]
    assert "error: Could not write checkpoint 10" in result.stderr
    assert "No space left on device" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def session(tmp_path: Path) -> TrainSession:
    """A CPU session over a tiny prepared model that checkpoints into ``tmp_path``."""
    accelerator = accelerate.Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    model, _ = accelerator.prepare(model, torch.optim.AdamW(model.parameters()))
    return TrainSession(accelerator, FinetuneConfig(), Checkpointer(accelerator, tmp_path, total_limit=2))


def test_ctrl_c_on_a_full_disk_still_stops_with_a_clear_message(
    session: TrainSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session.progress.global_step = 3
    earlier = session.save_checkpoint()
    session.progress.global_step = 4
    session.guard.received = signal.SIGTERM
    monkeypatch.setattr(
        accelerate.Accelerator, "save_state", fail_on_call(accelerate.Accelerator.save_state, 1)
    )
    with pytest.raises(TrainingInterrupted) as info:
        session.interrupt()
    assert info.value.exit_code == 128 + signal.SIGTERM
    assert info.value.checkpoint is None
    message = str(info.value)
    assert message.startswith(
        "Interrupted at epoch 1, optimizer step 4, but its checkpoint could not be saved."
    )
    assert "Could not write checkpoint 4" in message and f"the latest valid one is {earlier}" in message
    assert complete_checkpoints(tmp_path) == [earlier]
    assert not list((tmp_path / CHECKPOINTS_DIR).glob(".tmp-*"))


class _Model:
    """Stands for a TransferModel: its save writes a weights file, or finds the disk full.

    (A real one stages its files in a hidden folder, removed when the save fails.)
    """

    def __init__(self, disk_full: bool) -> None:
        self.disk_full, self.saves = disk_full, 0

    def save_pretrained(self, directory: Path, weights: dict[str, torch.Tensor] | None = None) -> None:
        self.saves += 1
        if self.disk_full:
            raise FULL_DISK
        (Path(directory) / "model.safetensors").write_bytes(b"weights")


def _save_on_a_full_disk(self: FinetuneConfig, path: Path) -> None:
    Path(path).write_text("{")
    raise FULL_DISK


def _earlier_run(out: Path) -> dict[str, bytes]:
    out.mkdir()
    (out / RESULTS_NAME).write_text(json.dumps({"test": {"accuracy": 0.9}}))
    (out / TABLE_NAME).write_text("| head | yes |\n")
    (out / RUN_CONFIG_NAME).write_text(json.dumps({"epochs": 3}))
    return {p.name: p.read_bytes() for p in out.iterdir()}


def _write_run(out: Path, model: _Model) -> None:
    write_run(out, model, FinetuneConfig(epochs=1), {"test": {"accuracy": 0.5}}, "| body | yes |")  # type: ignore[arg-type]


@pytest.mark.parametrize("fails", ["model", "run_config"])
def test_a_failed_overwrite_on_a_full_disk_keeps_the_earlier_run(
    fails: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    before = _earlier_run(out)
    model = _Model(disk_full=fails == "model")
    if fails == "run_config":
        monkeypatch.setattr(FinetuneConfig, "save", _save_on_a_full_disk)
    with pytest.raises(SaveError) as info:
        _write_run(out, model)
    assert "No space left on device" in str(info.value) and str(out) in str(info.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # and no temporary file
    assert model.saves == (1 if fails == "model" else 0)  # the model is saved only once the rest is written


def test_write_run_replaces_the_earlier_files_and_leaves_no_temporaries(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _earlier_run(out)
    _write_run(out, _Model(disk_full=False))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [RESULTS_NAME, TABLE_NAME, RUN_CONFIG_NAME, "model.safetensors"]
    )
    assert json.loads((out / RESULTS_NAME).read_text()) == {"test": {"accuracy": 0.5}}
    assert json.loads((out / RUN_CONFIG_NAME).read_text())["epochs"] == 1
    assert (out / TABLE_NAME).read_text() == "| body | yes |\n"


# ---------------------------------------------------------------- NaN loss


def _nan_at_call(call: int) -> Callable[..., torch.Tensor]:
    """Cross-entropy whose ``call``-th call gives NaN (and NaN gradients), as a diverging run does."""
    calls = []

    def cross_entropy(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        loss = torch.nn.functional.cross_entropy(*args, **kwargs)
        return loss * float("nan") if len(calls) == call else loss

    return cross_entropy


def test_a_nan_loss_stops_at_its_step_and_names_the_last_good_checkpoint(
    config: FinetuneConfig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    out = Path(config.output_dir)
    good = out / CHECKPOINTS_DIR / "checkpoint-5"
    with pytest.MonkeyPatch.context() as patch:
        # One training batch per call: the 7th call is the loss of optimizer step 7.
        loss = _nan_at_call(7)
        patch.setattr(
            SingleLabelClassification, "loss", lambda self, outputs, targets: loss(outputs, targets)
        )
        with pytest.raises(TrainingError) as info:
            train(config)
    message = str(info.value)
    assert message.startswith("The loss became nan at step 7 (epoch 1, batch 7); training stopped before")
    assert "Lower --learning_rate" in message
    assert f"The last good checkpoint is {good}." in message
    assert complete_checkpoints(out) == [good]  # nothing saved after the bad step
    _resumes_from(config, good, caplog)


def _step_inputs(session: TrainSession, fused: bool = True) -> tuple[list[torch.nn.Parameter], Any, Any]:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), fused=fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    model, optimizer, scheduler = session.accelerator.prepare(model, optimizer, scheduler)
    return list(model.parameters()), optimizer, scheduler


def _backward(session: TrainSession, params: list[torch.nn.Parameter], scale: float = 1.0) -> torch.Tensor:
    weight, bias = params
    loss = (torch.ones(1, 3) @ weight.T + bias).sum() * scale
    session.accelerator.backward(loss)
    return loss


def _snapshot(params: list[torch.nn.Parameter], optimizer: Any) -> list[torch.Tensor]:
    """The weights and every optimizer state tensor (moments and step counts)."""
    state = [t for p in params for t in optimizer.optimizer.state.get(p, {}).values()]
    return [t.detach().clone() for t in [*params, *state]]


def _unchanged(before: list[torch.Tensor], params: list[torch.nn.Parameter], optimizer: Any) -> bool:
    return all(torch.equal(a, b) for a, b in zip(before, _snapshot(params, optimizer), strict=True))


def test_an_fp16_overflow_step_is_skipped_but_a_nan_loss_stops(session: TrainSession) -> None:
    # What accelerate sets up for fp16 on a GPU: a GradScaler the optimizer steps through.
    # On a CPU it makes none, so this one is attached before ``prepare``.
    session.accelerator.scaler = torch.amp.GradScaler("cpu")
    params, optimizer, scheduler = _step_inputs(session)
    loss = _backward(session, params)
    for param in params:
        param.grad.fill_(float("inf"))  # an overflow of the scaled gradients
    before = [p.detach().clone() for p in params]
    optimizer_step(session, params, optimizer, scheduler, loss)
    assert session.accelerator.scaler.get_scale() == 2.0**15  # lowered from 2**16: an overflow
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before, strict=True))
    # Under a scaler the values are read before each step: the loss is already counted.
    assert session.progress.epoch_loss_sum == pytest.approx(loss.item()) and not session.steps

    loss = _backward(session, params, scale=float("nan"))
    with pytest.raises(TrainingError, match=r"The loss became nan at step 1 \(epoch 1, batch 1\)") as info:
        optimizer_step(session, params, optimizer, scheduler, loss)
    assert "No checkpoint was saved before it." in str(info.value)


def test_a_bad_step_and_every_step_after_it_are_skipped_on_the_device_until_the_read(
    session: TrainSession,
) -> None:
    params, optimizer, scheduler = _step_inputs(session)
    loss = _backward(session, params)
    optimizer_step(session, params, optimizer, scheduler, loss)  # a good step changes the weights
    session.progress.global_step, session.progress.batch = 11, 3
    session.last_checkpoint = Path("out/checkpoints/checkpoint-10")
    before = _snapshot(params, optimizer)
    loss = _backward(session, params)
    params[0].grad[0, 0] = float("inf")
    optimizer_step(session, params, optimizer, scheduler, loss)
    session.progress.global_step, session.progress.batch = 12, 4
    for _ in range(2):  # finite steps after it are skipped too: the flag stays set until the read
        optimizer_step(session, params, optimizer, scheduler, _backward(session, params))
    assert _unchanged(before, params, optimizer)  # weights, moments and step counts
    with pytest.raises(TrainingError) as info:
        session.read_steps()
    assert str(info.value).startswith("The gradients became inf at step 12 (epoch 1, batch 4)")
    assert str(info.value).endswith("The last good checkpoint is out/checkpoints/checkpoint-10.")


def test_an_optimizer_that_cannot_skip_on_the_device_is_checked_before_each_step(
    session: TrainSession,
) -> None:
    params, optimizer, scheduler = _step_inputs(session, fused=False)
    loss = _backward(session, params)
    params[0].grad[0, 0] = float("nan")
    before = _snapshot(params, optimizer)
    with pytest.raises(TrainingError, match=r"^The gradients became nan at step 1 \(epoch 1, batch 1\)"):
        optimizer_step(session, params, optimizer, scheduler, loss)
    assert _unchanged(before, params, optimizer)


def test_a_checkpoint_is_never_saved_after_a_skipped_step(session: TrainSession, tmp_path: Path) -> None:
    session.checkpointer = Checkpointer(session.accelerator, tmp_path, 0)
    params, optimizer, scheduler = _step_inputs(session)
    loss = _backward(session, params, scale=float("nan"))
    optimizer_step(session, params, optimizer, scheduler, loss)
    with pytest.raises(TrainingError, match="The loss became nan at step 1"):
        session.save_checkpoint()
    assert complete_checkpoints(tmp_path) == []


def test_pretraining_on_a_full_disk_keeps_the_earlier_run(
    tiny_bert: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nlptransfer.runs.pretrain import PretrainConfig, pretrain

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(sentiment_frame(60)["text"]) + "\n")
    out = tmp_path / "adapted"
    config = PretrainConfig(model=tiny_bert, train_file=str(texts), output_dir=str(out), epochs=1,
                            batch_size=8, heldout_split=0.1, save_steps=0, report_to=["none"])  # fmt: skip
    pretrain(config)
    before = {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()}
    assert {RESULTS_NAME, "model.safetensors", "config.json"} <= set(before)
    import transformers

    monkeypatch.setattr(
        transformers.PreTrainedTokenizerBase,
        "save_pretrained",
        fail_on_call(transformers.PreTrainedTokenizerBase.save_pretrained, 1),
    )
    with pytest.raises(SaveError, match="earlier run in that folder is unchanged"):
        pretrain(replace(config, overwrite_output_dir=True, seed=1))
    assert {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()} == before
    assert not [f for f in out.iterdir() if f.name.startswith(".saving-")]


def _file_size_limit(limit: int) -> Callable[[], None]:
    """In the child: every write past ``limit`` bytes fails with EFBIG, as a full disk fails it."""

    def apply() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer outright
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE and SIGXFSZ as on Linux")
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--save_steps", "5"], "error: Could not write checkpoint 5"),
        (["--save_steps", "0", "--no-save_every_epoch"], "error: Could not save the model to"),
    ],
    ids=["checkpoint", "final-model"],
)
def test_real_write_failures_from_every_writer_keep_the_earlier_run(
    config: FinetuneConfig, flags: list[str], message: str
) -> None:
    """Not a patched writer: the kernel refuses the bytes, and safetensors, torch.save and
    Python each fail in their own way (SafetensorError, RuntimeError, OSError)."""
    import subprocess

    from conftest import REPO, recipe

    out = Path(config.output_dir)
    args = ["--model", config.model, "--train_file", config.train_file, "--output_dir", str(out), "--epochs",
            "1", "--batch_size", "4", "--strategy", "finetune", "--report_to", "none"]  # fmt: skip
    first = run_script(recipe(*args, "--save_steps", "0"))
    assert first.returncode == 0, first.stderr[-3000:]
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    weights = (out / "model.safetensors").stat().st_size
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        recipe(*args, "--overwrite_output_dir", "--seed", "1", *flags), cwd=REPO, env=env,
        capture_output=True, text=True, timeout=600, preexec_fn=_file_size_limit(weights // 2), check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    leftovers = [p for p in out.rglob("*") if p.name.startswith((".tmp-", ".saving-"))]
    assert leftovers == [] and not any((out / CHECKPOINTS_DIR).glob("checkpoint-*"))
