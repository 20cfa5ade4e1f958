"""What every step of a run shares: config, strategy, accelerator, metrics."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator

from nlptransfer.config import FinetuneConfig
from nlptransfer.errors import TrainingError
from nlptransfer.metrics import MetricSet
from nlptransfer.strategies import Strategy

logger = logging.getLogger(__name__)


@dataclass
class RunContext:
    """What every step of a run needs, passed as one object."""

    config: FinetuneConfig
    strategy: Strategy
    accelerator: Accelerator
    metrics: MetricSet

    @property
    def show_progress(self) -> bool:
        return self.accelerator.is_local_main_process


def build_accelerator(config: FinetuneConfig) -> Accelerator:
    # Without cpu=True, a CPU-only `accelerate launch --multi_gpu` runs unsynchronised copies.
    accelerator = Accelerator(
        cpu=config.cpu or not torch.cuda.is_available(),
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
    )
    if accelerator.device.type == "cpu":
        if config.mixed_precision == "fp16":
            logger.warning("--mixed_precision fp16 has no effect on CPU; use bf16 or no.")
        local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        set_cpu_threads(config.num_threads, local)
    return accelerator


def set_cpu_threads(requested: int | None, local_processes: int) -> None:
    """Use every core: `accelerate launch` pins one thread per process on CPU by default."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = requested or max(1, cores // max(local_processes, 1))
    torch.set_num_threads(threads)
    logger.debug("using %d CPU threads per process", threads)


def optimizer_step(
    ctx: RunContext, params: list[torch.nn.Parameter], optimizer: Any, scheduler: Any, where: str
) -> None:
    """Clip, check for NaN on synced gradients, then step optimizer and schedule (inside ``accumulate``)."""
    accelerator = ctx.accelerator
    if accelerator.sync_gradients:
        # After the all-reduce every process holds the same gradients, so all of
        # them see a NaN together and stop together instead of deadlocking.
        norm = accelerator.clip_grad_norm_(params, ctx.config.max_grad_norm or float("inf"))
        if norm is not None and not torch.isfinite(torch.as_tensor(norm)):
            raise TrainingError(
                f"The gradients became {float(norm)} at {where}. Lower --learning_rate, "
                "or use --mixed_precision bf16/no if it was fp16."
            )
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
