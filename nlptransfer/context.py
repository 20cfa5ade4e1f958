"""What every step of a run shares: config, strategy, accelerator, metrics."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from nlptransfer.config import FinetuneConfig
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
