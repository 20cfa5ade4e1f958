"""Start and finish a training session: output folder, resume, trackers, checkpoints, curves."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from nlptransfer.config import TrainingOptions
from nlptransfer.engine.checkpoint import CHECKPOINTS_DIR, Checkpointer, read_checkpoint, resolve_checkpoint
from nlptransfer.engine.context import build_accelerator
from nlptransfer.engine.loop import TrainSession
from nlptransfer.engine.tracking import (
    LOG_NAME,
    LOGS_DIR,
    PLOT_NAME,
    build_trackers,
    flat_config,
    plot_curves,
)
from nlptransfer.errors import ConfigError

logger = logging.getLogger(__name__)

# Options that may change between a run and its resumption: they do not change what is computed.
RESUMABLE_CHANGES = {
    "nlptransfer_version", "resume_from_checkpoint", "overwrite_output_dir", "output_dir", "num_threads",
    "logging_steps", "report_to", "save_steps", "save_every_epoch", "save_total_limit", "push_to_hub",
    "hub_model_id", "cache_dir", "feature_cache", "eval_batch_size", "cpu",
}  # fmt: skip

# What a training session writes besides the model; a fresh run over an old one removes them first.
SESSION_FILES = (CHECKPOINTS_DIR, LOG_NAME, LOGS_DIR, PLOT_NAME)


def start_session(config: TrainingOptions, output_dir: Path, project: str) -> TrainSession:
    """The accelerator and session of a run, resumed from ``--resume_from_checkpoint`` when given.

    Call after the output folder was checked: a fresh run clears the checkpoints
    and logs an earlier run left there.
    """
    checkpoint = None
    if config.resume_from_checkpoint:
        path = resolve_checkpoint(config.resume_from_checkpoint, output_dir)
        checkpoint = read_checkpoint(path)
        check_resumable(checkpoint.state.get("config", {}), config.to_dict(), path)
    resume_step = checkpoint.progress.global_step if checkpoint else None
    trackers = build_trackers(config.trackers, output_dir, resume_step)
    accelerator = build_accelerator(config, output_dir, trackers)
    if checkpoint is not None:
        if checkpoint.progress.num_processes != accelerator.num_processes:
            raise ConfigError(
                f"Checkpoint {checkpoint.path} was written by {checkpoint.progress.num_processes} "
                f"process(es) and this run has {accelerator.num_processes}: resume with "
                f"`accelerate launch --num_processes {checkpoint.progress.num_processes} ...`."
            )
        # Each process has its own RNG state and loader shard in the checkpoint.
        checkpoint = read_checkpoint(checkpoint.path, accelerator.process_index)
    elif accelerator.is_main_process:
        clear_session_files(output_dir)
    accelerator.wait_for_everyone()
    if trackers:
        accelerator.init_trackers(project, config=flat_config(config.to_dict()))
    saving = config.save_steps > 0 or config.save_every_epoch
    checkpointer = Checkpointer(accelerator, output_dir, config.save_total_limit) if saving else None
    session = TrainSession(accelerator, config, checkpointer, resume=checkpoint)
    if checkpoint is not None:
        session.progress = checkpoint.progress
        session.last_checkpoint = checkpoint.path
    return session


def check_resumable(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse to resume with options that would make a different run than the one checkpointed."""
    changed = [
        f"--{key} {saved[key]!r} -> {current.get(key)!r}"
        for key in saved
        if key not in RESUMABLE_CHANGES and saved[key] != current.get(key)
    ]
    if changed:
        raise ConfigError(
            f"Checkpoint {path} was written with other options: {'; '.join(changed)}. Resume with the "
            "options of the stopped run (they are in its trainer_state.json, under 'config')."
        )


def clear_session_files(output_dir: Path) -> None:
    for name in SESSION_FILES:
        target = Path(output_dir) / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def finish_session(session: TrainSession, output_dir: Path, metric: str | None = None) -> Path | None:
    """Close the trackers (without ending the process group) and draw the training curves."""
    accelerator = session.accelerator
    for tracker in accelerator.trackers:
        tracker.finish()
    if not accelerator.is_main_process:
        return None
    try:
        return plot_curves(Path(output_dir) / LOG_NAME, Path(output_dir) / PLOT_NAME, metric)
    except ImportError:
        logger.info("matplotlib is not installed: no %s (pip install matplotlib).", PLOT_NAME)
        return None
    except OSError as err:
        # A plot is worth less than the model and results saved next: try those anyway.
        logger.warning("Could not draw the training curves to %s: %s", Path(output_dir) / PLOT_NAME, err)
        return None


__all__ = ["check_resumable", "clear_session_files", "finish_session", "start_session"]
