"""The Objective contract: the batches a phase draws and the loss of one batch; the loop owns the rest.

Like timm's ``task/`` classes and sentence-transformers' losses, an objective is one small class
registered by name. The step loop (``engine.loop.run_phase``) asks it for a loader, sets the
epoch on it before each epoch (a new order, new masks), and calls ``loss(model, batch)`` inside
``accelerator.accumulate``; accumulation, clipping, the schedule, checkpoints, resuming and
interruption stay in the loop. A closed-form objective (logistic regression on frozen features)
has no batches: ``run_phase`` calls its ``solve`` once instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch.utils.data import DataLoader

from nlptransfer.registry import Registry

if TYPE_CHECKING:
    from nlptransfer.engine.fit import PhaseRun


class Objective:
    """One training signal. Subclasses implement ``loader`` and ``loss``."""

    # The progress bar's label for an epoch.
    desc: ClassVar[str] = "epoch"
    # True when solved in one call (``solve``) rather than by steps over batches.
    closed_form: ClassVar[bool] = False
    # True when its batches come from the phase's datasets as they are, so token datasets may carry
    # the stored input of the first trainable block (``nlptransfer.engine.activations``).
    reads_activations: ClassVar[bool] = False
    # False when an epoch is a few steps (a pass over a few examples): --save_every_epoch then saves at
    # the end of the phase only (--save_steps still applies), as saving would take longer than training.
    checkpoint_every_epoch: ClassVar[bool] = True
    # Where an objective records the example indices this process trains on in its first epoch
    # (results.json reports how the processes shared the data); None records nothing.
    seen: list[int] | None = None
    epoch: int = 1

    @classmethod
    def from_phase(cls, run: PhaseRun) -> Objective:
        """The objective of a fine-tuning phase (strategies name it as the phase's ``loop``)."""
        raise NotImplementedError(f"{cls.__name__} is not a fine-tuning objective")

    def loader(self) -> DataLoader:
        """The phase's training batches (dicts of tensors), in an order fixed by the seed and the epoch."""
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Called (1-based) before each epoch, also on resuming in the middle of one."""

    @property
    def draws_global_seed(self) -> bool:
        """Whether the loop draws one global-RNG value per fresh epoch (as older token loaders did)."""
        return False

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """The loss of one batch; the loop calls backward on it."""
        raise NotImplementedError

    def solve(self, model: torch.nn.Module) -> float:
        """A closed-form objective's whole fit; returns its training loss."""
        raise NotImplementedError

    def observe(self, idx: Sequence[int]) -> None:
        """Called with each training batch's example indices, counted on the host before the batch
        went to the device (reading them there would make the step wait for it)."""
        if self.seen is not None and self.epoch == 1:
            self.seen.extend(idx)


OBJECTIVES: Registry[type[Objective]] = Registry("objective")
