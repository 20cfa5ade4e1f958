"""The step loop never waits for the device between logging steps.

A GPU runs ahead of the Python loop until the loop reads a device value into Python; then it waits
for every queued kernel. On this CPU-only machine the reads are counted by wrapping every Tensor
method that turns a tensor into Python values; on a GPU ``torch.cuda.set_sync_debug_mode`` catches
them. Reads made while the DataLoader builds a batch (sampler, dataset, collate: host data before
it is copied to the device) are not device reads and are left out.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import sentiment_frame
from safetensors.torch import load_file

import nlptransfer.engine.loop as loop
from nlptransfer.config import FinetuneConfig
from nlptransfer.runs.finetune import train

# Every Tensor method that hands a value to Python, hence waits for the device that computes it.
READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__", "__array__")
HOST_DATA = f"torch{'/'}utils{'/'}data{'/'}"  # the DataLoader's frames: sampler, fetch and collate
# transformers' SDPA mask builder asks whether a padding mask has any padding (`padding_mask.all()`),
# to skip the mask when there is none: one read per forward pass that is not ours, and that
# --torch_compile removes (under dynamo it builds the mask without asking).
MODEL_MASK_CHECK = "transformers/masking_utils.py"


class ReadCounter:
    """Counts the device reads of the training thread, and where each one came from."""

    def __init__(self) -> None:
        self.reads: list[str] = []
        self.mask_checks = 0
        self.thread = threading.get_ident()

    def wrap(self, name: str, original: Any) -> Any:
        def counted(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == self.thread:
                where = self._caller()
                if where is not None:
                    self.reads.append(f"Tensor.{name} from {where}")
            return original(tensor, *args, **kwargs)

        return counted

    @staticmethod
    def _caller() -> str | None:
        """The first frame outside this file, or None when the read prepares host data."""
        frame, caller = sys._getframe(2), None
        while frame is not None:
            filename = frame.f_code.co_filename.replace("\\", "/")
            if HOST_DATA in filename:
                return None
            if caller is None and filename != __file__:
                caller = f"{filename}:{frame.f_lineno} ({frame.f_code.co_name})"
            frame = frame.f_back
        return caller

    def take(self) -> list[str]:
        """The reads since the last call, but transformers' padding-mask check (see MODEL_MASK_CHECK)."""
        reads, self.reads = self.reads, []
        self.mask_checks += sum(MODEL_MASK_CHECK in r for r in reads)
        return [r for r in reads if MODEL_MASK_CHECK not in r]


@pytest.fixture
def counter(monkeypatch: pytest.MonkeyPatch) -> Iterator[ReadCounter]:
    counter = ReadCounter()
    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, counter.wrap(name, getattr(torch.Tensor, name)))
    yield counter


def _reads_per_step(counter: ReadCounter, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Collect, for each optimizer step, the reads since the end of the previous one (its own
    logging read included)."""
    steps: list[list[str]] = []
    original, epoch = loop._after_optimizer_step, loop._train_one_epoch

    def after(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        steps.append(counter.take())

    def train_one_epoch(*args: Any, **kwargs: Any) -> None:
        counter.take()  # setting up the phase (before its first batch) is not a step
        epoch(*args, **kwargs)

    monkeypatch.setattr(loop, "_after_optimizer_step", after)
    monkeypatch.setattr(loop, "_train_one_epoch", train_one_epoch)
    return steps


def _config(tiny_bert: str, tmp_path: Path, strategy: str = "finetune", **options: Any) -> FinetuneConfig:
    """One epoch of 57 training texts at batch 4: 15 steps, a logging step every 4, no checkpoints."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    sentiment_frame(72).to_csv(tmp_path / "train.csv", index=False)
    return FinetuneConfig(
        model=tiny_bert, train_file=str(tmp_path / "train.csv"), test_split=0.2, strategy=strategy,
        epochs=1, logging_steps=4, save_steps=0, save_every_epoch=False,
        output_dir=str(tmp_path / "out"), report_to=["none"], **{"batch_size": 4, **options},
    )  # fmt: skip


@pytest.mark.parametrize(
    "strategy, options",
    [
        ("finetune", {}),
        ("lora", {}),
        ("contrastive", {"pair_batch_size": 4}),
        ("finetune", {"gradient_accumulation_steps": 2, "batch_size": 2}),
    ],
    ids=["finetune", "lora", "contrastive", "accumulation"],
)
def test_no_step_reads_the_device_except_logging_steps(
    strategy: str, options: dict[str, Any], tiny_bert: str, tmp_path: Path,
    counter: ReadCounter, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    config = _config(tiny_bert, tmp_path, strategy, **options)
    steps = _reads_per_step(counter, monkeypatch)
    train(config)
    assert len(steps) >= 8, f"the run should take several logging windows, took {len(steps)} steps"
    for number, reads in enumerate(steps, start=1):
        # A logging step reads the window's losses and gradient norms once, in one go.
        expected = 1 if number % config.logging_steps == 0 else 0
        assert len(reads) == expected, f"step {number} read the device {len(reads)} times: {reads}"
        if expected:
            assert "engine/steps.py" in reads[0] and "(read)" in reads[0]
    # The model's own check, at most once per forward pass (a step of pairs may make several).
    assert counter.mask_checks <= len(steps) * config.gradient_accumulation_steps * 4


def test_the_count_catches_a_step_that_reads_the_device(
    tiny_bert: str, tmp_path: Path, counter: ReadCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An optimizer that cannot skip on the device is checked on the host before every step.
    monkeypatch.setattr(loop, "skips_on_device", lambda optimizer: False)
    config = _config(tiny_bert, tmp_path)
    steps = _reads_per_step(counter, monkeypatch)
    train(config)
    assert steps and all(any("(read)" in r for r in reads) for reads in steps)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: torch.cuda.set_sync_debug_mode")
def test_no_step_synchronises_the_gpu_except_logging_steps(
    tiny_bert: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tiny_bert, tmp_path)
    original, steps = loop._after_optimizer_step, []

    def after(session: Any, *args: Any) -> None:
        # Errors on any synchronising call from here to the next logging step's read.
        torch.cuda.set_sync_debug_mode(0)
        original(session, *args)
        steps.append(session.progress.global_step)
        torch.cuda.set_sync_debug_mode(0 if (len(steps) + 1) % config.logging_steps == 0 else 2)

    monkeypatch.setattr(loop, "_after_optimizer_step", after)
    try:
        train(config)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(steps) >= 8


@pytest.mark.slow
def test_torch_compile_trains_the_same_model_and_saves_it_uncompiled(
    tiny_bert: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Inductor draws dropout masks from its own generator unless told to use eager's.
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    plain = train(_config(tiny_bert, tmp_path / "plain"))
    torch._dynamo.reset()
    compiled = train(replace(_config(tiny_bert, tmp_path / "compiled"), torch_compile=True))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did compile
    left, right = (
        load_file(str(tmp_path / run / "out" / "model.safetensors")) for run in ("plain", "compiled")
    )
    assert left.keys() == right.keys()  # no torch.compile wrapper prefix in the saved names
    for name in left:
        # inductor fuses kernels, so the sums are not in the same order: close, not bitwise.
        torch.testing.assert_close(right[name], left[name], rtol=1e-4, atol=1e-5, msg=name)
    assert compiled["test"] == pytest.approx(plain["test"])
