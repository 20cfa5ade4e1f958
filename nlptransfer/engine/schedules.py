"""Learning-rate schedules, all with warmup: linear, cosine, constant, slanted triangular."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from nlptransfer.registry import Registry

# name -> f(step, warmup_steps, total_steps, ratio) -> multiplier of the peak learning rate
SCHEDULES: Registry[Callable[[int, int, int, float], float]] = Registry("lr_scheduler")


def _rise(step: int, warmup: int) -> float:
    # transformers' warmup (step / warmup, so the first step has LR 0): the same runs as its schedules.
    return step / max(1, warmup)


@SCHEDULES.register("linear")
def linear(step: int, warmup: int, total: int, ratio: float) -> float:
    if step < warmup:
        return _rise(step, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


@SCHEDULES.register("cosine")
def cosine(step: int, warmup: int, total: int, ratio: float) -> float:
    if step < warmup:
        return _rise(step, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@SCHEDULES.register("constant")
def constant(step: int, warmup: int, total: int, ratio: float) -> float:
    return _rise(step, warmup) if step < warmup else 1.0


@SCHEDULES.register("slanted-triangular")
def slanted_triangular(step: int, warmup: int, total: int, ratio: float) -> float:
    """ULMFiT (Howard & Ruder 2018, eq. 3): rise for ``cut`` steps, then fall to 1/ratio of the peak.

    p = t / cut while rising, then 1 - (t - cut) / (T - cut); lr = peak (1 + p (ratio - 1)) / ratio.
    """
    cut = max(1, warmup)
    p = step / cut if step < cut else 1.0 - (step - cut) / max(1, total - cut)
    return (1.0 + max(0.0, p) * (ratio - 1.0)) / ratio


def build_schedule(
    name: str, optimizer: Optimizer, warmup_steps: int, total_steps: int, ratio: float = 32.0
) -> LambdaLR:
    """A ``LambdaLR`` over ``total_steps`` scheduler steps; picklable, so it checkpoints."""
    fn = SCHEDULES.get(name)
    return LambdaLR(optimizer, partial(fn, warmup=warmup_steps, total=max(1, total_steps), ratio=ratio))


__all__ = ["SCHEDULES", "build_schedule"]
