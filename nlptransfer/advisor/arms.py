"""Arms: named strategy presets that the advisor recommends and ``compare`` runs side by side.

An arm is a strategy plus the options that make it one of the textbook choices
(feature extraction, the top K layers, all layers at a reduced rate, LoRA). Any
registered strategy name is an arm too (its defaults), and ``finetune-topK``
names the top-K fine-tune for any K.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from nlptransfer.config import FinetuneConfig
from nlptransfer.errors import UnknownNameError
from nlptransfer.registry import closest_hint
from nlptransfer.strategies import STRATEGIES, get_strategy


@dataclass(frozen=True)
class Arm:
    name: str
    description: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def strategy(self) -> str:
        return self.options.get("strategy", self.name)

    @property
    def default_epochs(self) -> int:
        if self.options.get("epochs"):
            return self.options["epochs"]
        return get_strategy(self.strategy).epochs(FinetuneConfig(strategy=self.strategy))


ARMS: dict[str, Arm] = {
    arm.name: arm
    for arm in (
        Arm(
            "feature-extraction",
            "frozen body, new linear head on its features",
            {"strategy": "feature-extraction"},
        ),
        Arm(
            "feature-extraction-all-layers",
            "frozen body, linear head on a learned mix of every layer",
            {"strategy": "feature-extraction", "layers": ["all"], "layer_mix": "scalar"},
        ),
        Arm(
            "contrastive",
            "the body tuned on every pair of examples within each batch (same label or not, SetFit's "
            "loss), then a logistic-regression head",
            {"strategy": "contrastive"},
        ),
        Arm(
            "finetune-top2",
            "the top 2 layers and the head train; the rest stays frozen",
            {"strategy": "finetune", "unfreeze_layers": 2},
        ),
        Arm(
            "finetune",
            "all layers train, the body at 1/10 of the head's learning rate",
            {"strategy": "finetune", "body_lr_scale": 0.1},
        ),
        # 3 epochs, not the strategy's 5: on thousands of examples LoRA at 1e-3 has converged by then,
        # and a sweep over label budgets must stay affordable.
        # Not a strategy of its own: --strategy auto, which picks one (with its head, protocol and
        # schedule) for the data of each budget, as a user's default run would.
        Arm(
            "auto",
            "whatever --strategy auto picks for the data: strategy, head, protocol, schedule",
            {"strategy": "auto"},
        ),
        Arm(
            "lora",
            "a LoRA adapter (rank 8) on the frozen body, and the head; 3 epochs",
            {"strategy": "lora", "epochs": 3},
        ),
    )
}

_TOP_K = re.compile(r"finetune-top(\d+)$")


def get_arm(name: str) -> Arm:
    """A preset arm, ``finetune-topK``, or a registered strategy with its defaults."""
    if name in ARMS:
        return ARMS[name]
    match = _TOP_K.match(name)
    if match:
        k = int(match.group(1))
        return Arm(
            name, f"the top {k} layers and the head train", {"strategy": "finetune", "unfreeze_layers": k}
        )
    if name in STRATEGIES:
        return Arm(name, f"--strategy {name} with its defaults", {"strategy": name})
    valid = sorted(set(ARMS) | set(STRATEGIES.names()))
    raise UnknownNameError(
        f"Unknown arm '{name}'. Valid arms: {', '.join(valid)}, or finetune-topK for any K."
        + closest_hint(name, valid)
    )


# Fewer optimizer steps than this and a run has barely moved from where it started: the
# defaults (2 epochs of batch 32) are tuned for thousands of examples, and at a few hundred
# they end after a few dozen steps. Small data gets smaller batches first (more steps for the
# same compute), then more epochs; early stopping on validation ends runs that stop improving.
MIN_STEPS = 250
MAX_EPOCHS = 60
MIN_BATCH = 8
STEPS_PER_EPOCH = 32


@dataclass(frozen=True)
class Schedule:
    epochs: int
    patience: int | None
    batch_size: int


def schedule(
    arm: Arm, num_train: int, batch_size: int, min_steps: int = MIN_STEPS, shrink_batch: bool = True
) -> Schedule:
    """Batch size and epochs for ``num_train`` examples: the arm's defaults, or enough for ``min_steps``
    (``shrink_batch=False``: at ``batch_size``, more epochs only)."""
    strategy = get_strategy(arm.strategy)
    default = arm.default_epochs
    if strategy.fixed_schedule:
        return Schedule(default, strategy.default_patience, batch_size)
    batch = min(batch_size, max(MIN_BATCH, num_train // STEPS_PER_EPOCH)) if shrink_batch else batch_size
    steps_per_epoch = max(1, math.ceil(num_train / batch))
    epochs = max(default, min(MAX_EPOCHS, math.ceil(min_steps / steps_per_epoch)))
    patience = strategy.default_patience
    if epochs > default:
        patience = patience or 5
    return Schedule(epochs, patience, batch)
