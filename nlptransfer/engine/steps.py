"""Optimizer steps that never wait for the device, and the reads that catch up with them.

A GPU runs ahead of the Python loop that feeds it, until the loop reads a device value into Python
(``.item()``, ``.tolist()``, ``float(t)``, ``if t:``): then it waits for every queued kernel. So each
step's loss and gradient norm stay on the device, and the loop reads them all at once at logging,
checkpoint and epoch-end steps. What the loop needs every step (how many examples and tokens, which
examples) is counted on the host by the collate function, before the batch is copied over.

A non-finite loss or gradient still never changes the weights: it sets a flag on the device that
fused AdamW reads, as it reads GradScaler's ``found_inf``, to skip its update. The flag stays set
until the next read, which stops the run and names the first bad step, so no update after it is
applied either, and no checkpoint is saved before that read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

BATCH_INFO = "_batch_info"  # the batch key of a BatchInfo; popped by the loop before the objective runs


@dataclass(frozen=True)
class BatchInfo:
    """What the loop reads about a batch every step, counted on the host: no device read needed."""

    idx: tuple[int, ...]  # the examples' positions in their split (empty when a batch has none)
    examples: int
    tokens: int  # non-padding tokens (0 without an attention mask)

    @classmethod
    def of(cls, batch: dict[str, Any]) -> BatchInfo:
        idx = batch.get("idx")
        mask = batch.get("attention_mask")
        first = next(iter(batch.values()))
        return cls(
            idx=tuple(idx.tolist()) if isinstance(idx, torch.Tensor) else (),
            examples=len(first),
            tokens=int(mask.sum()) if isinstance(mask, torch.Tensor) else 0,
        )


class WithBatchInfo:
    """A collate function that also adds the batch's ``BatchInfo`` (accelerate moves tensors only)."""

    def __init__(self, collate: Callable[[list[Any]], Any]) -> None:
        self.collate = collate

    def __call__(self, items: list[Any]) -> Any:
        batch = self.collate(items)
        if isinstance(batch, dict) and batch:
            batch[BATCH_INFO] = BatchInfo.of(batch)
        return batch


@dataclass(frozen=True)
class StepPlace:
    """Where a value was recorded: the optimizer step it belongs to, its epoch and batch (1-based)."""

    step: int
    epoch: int
    batch: int

    def __str__(self) -> str:
        return f"step {self.step} (epoch {self.epoch}, batch {self.batch})"


@dataclass(frozen=True)
class StepValue:
    name: str  # "loss" or "gradients" (the clipped gradients' norm)
    value: float
    place: StepPlace


class PendingSteps:
    """Each batch's loss and each step's gradient norm, on the device until ``read``; and the flag
    that skips every update from the first non-finite value on."""

    def __init__(self) -> None:
        self._tensors: list[torch.Tensor] = []
        self._labels: list[tuple[str, StepPlace]] = []
        self.skip: torch.Tensor | None = None  # 1.0 once a value that ``skips`` was not finite

    def add(self, name: str, tensor: torch.Tensor, place: StepPlace, skips: bool) -> None:
        if hasattr(tensor, "full_tensor"):  # a DTensor (FSDP2's gradient norm): gathered, not read
            tensor = tensor.full_tensor()
        value = tensor.detach().float().reshape(())
        self._tensors.append(value)
        self._labels.append((name, place))
        if skips:
            bad = (~torch.isfinite(value)).float()
            self.skip = bad if self.skip is None else torch.maximum(self.skip, bad)

    def __len__(self) -> int:
        return len(self._tensors)

    def read(self) -> list[StepValue]:
        """All pending values in the order they were added, with one device read."""
        if not self._tensors:
            return []
        device = self._tensors[0].device
        values = torch.stack([t.to(device) for t in self._tensors]).tolist()
        read = [
            StepValue(name, value, place) for (name, place), value in zip(self._labels, values, strict=True)
        ]
        self._tensors, self._labels, self.skip = [], [], None
        return read


def skips_on_device(optimizer: Any) -> bool:
    """Whether ``optimizer`` can skip an update on the device's say: torch's fused Adam/AdamW (its
    kernel reads ``found_inf``). Others are checked on the host before every step instead."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    groups: Sequence[dict[str, Any]] = getattr(inner, "param_groups", ())
    return isinstance(inner, torch.optim.Adam) and bool(groups) and all(g.get("fused") for g in groups)


def set_skip_flag(optimizer: Any, skip: torch.Tensor | None) -> None:
    """Hand the skip flag to the fused kernel the way GradScaler does (no grad_scale: nothing to unscale)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    inner.grad_scale = None
    inner.found_inf = skip


__all__ = [
    "BATCH_INFO",
    "BatchInfo",
    "PendingSteps",
    "StepPlace",
    "StepValue",
    "WithBatchInfo",
    "set_skip_flag",
    "skips_on_device",
]
