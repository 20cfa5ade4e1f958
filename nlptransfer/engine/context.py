"""What every step of a run shares: config, strategy, accelerator, metrics."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

from nlptransfer.config import FinetuneConfig, TrainingOptions
from nlptransfer.engine.loop import TrainSession
from nlptransfer.engine.tracking import LOGS_DIR
from nlptransfer.strategies import Strategy
from nlptransfer.tasks.metrics import MetricSet

logger = logging.getLogger(__name__)


@dataclass
class RunContext:
    """What every step of a run needs, passed as one object."""

    config: FinetuneConfig
    strategy: Strategy
    accelerator: Accelerator
    metrics: MetricSet
    # Checkpoints, tracking and interruption; by default a session that saves nothing.
    session: TrainSession = None  # type: ignore[assignment]
    # Called after each validated epoch with (epoch, score of --metric_for_best_model): a
    # hyperparameter search reports to its trial there, and may stop the run (by raising).
    epoch_hook: Callable[[int, float], None] | None = None

    def __post_init__(self) -> None:
        if self.session is None:
            self.session = TrainSession(self.accelerator, self.config, checkpointer=None)

    @property
    def show_progress(self) -> bool:
        return self.accelerator.is_local_main_process


def build_accelerator(
    config: TrainingOptions, output_dir: Path | None = None, log_with: list[Any] | None = None
) -> Accelerator:
    # Without cpu=True, a CPU-only `accelerate launch --multi_gpu` runs unsynchronised copies.
    accelerator = Accelerator(
        cpu=config.cpu or not torch.cuda.is_available(),
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        # Batches copy to the GPU while the host goes on (the loader pins them: engine.loop).
        dataloader_config=DataLoaderConfiguration(non_blocking=True),
        log_with=log_with or None,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(Path(output_dir) / LOGS_DIR)
        )
        if output_dir is not None
        else None,
    )
    if accelerator.device.type == "cpu":
        warn_sharding_ignored(accelerator)
        if config.mixed_precision == "fp16":
            logger.warning("--mixed_precision fp16 has no effect on CPU; use bf16 or no.")
        local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        set_cpu_threads(config.num_threads, local)
    return accelerator


def warn_sharding_ignored(accelerator: Accelerator) -> None:
    """Say so when an FSDP or DeepSpeed config meets a CPU run: accelerate turns them on only for GPUs
    (and other accelerators), and on CPU silently runs plain data parallelism instead."""
    for variable, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        asked = os.environ.get(variable, "").lower() == "true"
        if asked and name.upper() not in str(accelerator.distributed_type):
            logger.warning(
                "The accelerate config asks for %s, which accelerate runs only on GPUs; on this CPU run it "
                "uses %s instead, and every process holds the whole model.",
                name, accelerator.distributed_type,
            )  # fmt: skip


def set_cpu_threads(requested: int | None, local_processes: int) -> None:
    """Use every core: `accelerate launch` pins one thread per process on CPU by default."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = requested or max(1, cores // max(local_processes, 1))
    torch.set_num_threads(threads)
    logger.debug("using %d CPU threads per process", threads)
