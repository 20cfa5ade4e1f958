"""The Task contract: what a model predicts, the loss it trains with, and how its outputs are read.

A new kind of target (label sets, numbers) is a new registered Task, not a branch in the model,
the objectives or the evaluation: they ask the model's task for the loss, the activation of its
outputs, the predictions metrics compare, and the answers ``predict`` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from nlptransfer.registry import Registry


class Task:
    """One kind of target. Subclasses set ``name`` and implement the four methods."""

    # The registry name saved in a model's config.
    name: ClassVar[str]

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch of the head's outputs (logits) against its targets."""
        raise NotImplementedError

    def activate(self, outputs: torch.Tensor) -> torch.Tensor:
        """The head's outputs as the scores ``predict`` reports (e.g. class probabilities)."""
        raise NotImplementedError

    def decode(self, scores: np.ndarray, labels: Sequence[str]) -> list[Any]:
        """The answer for each example, from its activated scores."""
        raise NotImplementedError

    def predictions(self, outputs: torch.Tensor) -> list[Any]:
        """What the metrics compare with the references, one per example."""
        raise NotImplementedError


TASKS: Registry[type[Task]] = Registry("task")


@TASKS.register("single_label_classification")
class SingleLabelClassification(Task):
    """One label per example, out of two or more: cross-entropy, softmax, the most probable label."""

    name = "single_label_classification"

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets)

    def activate(self, outputs: torch.Tensor) -> torch.Tensor:
        return torch.softmax(outputs.float(), dim=-1)

    def decode(self, scores: np.ndarray, labels: Sequence[str]) -> list[Any]:
        return [labels[i] for i in scores.argmax(1)]

    def predictions(self, outputs: torch.Tensor) -> list[Any]:
        return outputs.argmax(-1).tolist()


DEFAULT_TASK = SingleLabelClassification.name


def build_task(name: str = DEFAULT_TASK) -> Task:
    return TASKS.get(name)()
