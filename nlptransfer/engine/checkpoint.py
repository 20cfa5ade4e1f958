"""Atomic training checkpoints on top of ``accelerator.save_state``.

A checkpoint is written to a hidden temporary folder by every process, then
renamed to ``checkpoints/checkpoint-<step>`` by the main process once all of
them finished: a rename is atomic, so a process killed while saving leaves only
a temporary folder, which ``latest`` never picks and the next save removes.
A write that fails (a full disk) removes its temporary folder and raises
:class:`SaveError`; earlier checkpoints are never touched before the rename.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from nlptransfer.errors import ConfigError, ModelLoadError, SaveError, write_errors
from nlptransfer.files import TMP_PREFIX

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
STATE_NAME = "trainer_state.json"
TENSORS_NAME = "trainer_tensors.safetensors"
_NAME = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint, so a resumed run continues from there."""

    phase: int = 0  # index of the phase in progress
    epoch: int = 1  # epoch of that phase in progress (1-based)
    batch: int = 0  # batches of that epoch already trained (and skipped on resume)
    global_step: int = 0  # optimizer steps over the whole run
    epoch_loss_sum: float = 0.0  # sum of this epoch's batch losses so far (for the epoch mean)
    phase_done: bool = False  # the phase ran its last epoch or stopped early
    num_processes: int = 1

    def next_phase(self) -> None:
        self.phase, self.epoch, self.batch, self.epoch_loss_sum, self.phase_done = (
            self.phase + 1,
            1,
            0,
            0.0,
            False,
        )


@dataclass
class Checkpoint:
    """A complete checkpoint read back: its folder, progress, and the owner's saved state."""

    path: Path
    progress: Progress
    state: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    process_state: dict[str, Any]


class Snapshot(NamedTuple):
    """What a run's owner adds to a checkpoint besides accelerate's state."""

    state: dict[str, Any]  # JSON: history, best epoch, options
    tensors: dict[str, torch.Tensor]  # e.g. the best epoch's weights
    process_state: dict[str, Any]  # JSON, one per process: e.g. the examples it has seen


class Checkpointable(Protocol):
    """Fit state that a checkpoint saves and a resumed run gets back (as torch modules do)."""

    def state_dict(self) -> Snapshot: ...

    def load_state_dict(self, checkpoint: Checkpoint) -> None: ...


def checkpoint_root(output_dir: Path) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (temporary folders of interrupted saves excluded)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if (p / STATE_NAME).is_file()]


def resolve_checkpoint(spec: str, output_dir: Path) -> Path:
    """``latest`` or a checkpoint folder path -> a complete checkpoint folder, or a clear error."""
    if spec == "latest":
        found = complete_checkpoints(output_dir)
        if not found:
            raise ConfigError(
                "--resume_from_checkpoint latest: no complete checkpoint in "
                f"'{checkpoint_root(output_dir)}'. "
                "Pass the --output_dir of the stopped run (with the options it used), or a checkpoint path."
            )
        return found[-1]
    path = Path(spec).expanduser()
    if not (path / STATE_NAME).is_file():
        hint = ""
        if path.is_dir() and complete_checkpoints(path.parent if path.name == CHECKPOINTS_DIR else path):
            hint = (
                " It looks like a run folder: pass --output_dir to it with --resume_from_checkpoint latest."
            )
        raise ConfigError(
            f"--resume_from_checkpoint '{spec}' is not a complete checkpoint (no {STATE_NAME} in it). "
            f"Pass 'latest' or a folder such as {CHECKPOINTS_DIR}/checkpoint-500.{hint}"
        )
    return path


def read_checkpoint(path: Path, process_index: int = 0) -> Checkpoint:
    try:
        state = json.loads((path / STATE_NAME).read_text())
        progress = Progress(**state.pop("progress"))
        tensors_file = path / TENSORS_NAME
        tensors = load_file(str(tensors_file)) if tensors_file.is_file() else {}
        process_file = path / f"process_{process_index}.json"
        process_state = json.loads(process_file.read_text()) if process_file.is_file() else {}
    except NOT_DAMAGE:
        raise
    except Exception as err:  # json, safetensors and a tampered progress raise unrelated types
        raise damaged_checkpoint(path, err) from err
    return Checkpoint(path, progress, state, tensors, process_state)


# What accelerate names the model of a checkpoint: its own safetensors file, or under FSDP with a full
# state dict a torch.save file (read weights-only here and by accelerate).
MODEL_NAME, FSDP_MODEL_NAME = "model.safetensors", "pytorch_model_fsdp.bin"


def checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    """The model weights a checkpoint holds, whole (names without DDP's ``module.`` prefix)."""
    if (path / FSDP_MODEL_NAME).is_file():
        weights = torch.load(path / FSDP_MODEL_NAME, map_location="cpu", weights_only=True)
    elif (path / MODEL_NAME).is_file() or not any(path.glob("pytorch_model_fsdp_*")):
        weights = load_file(str(path / MODEL_NAME))
    else:
        raise ConfigError(
            f"Checkpoint {path} holds FSDP shards (fsdp_state_dict_type: SHARDED_STATE_DICT); resuming "
            "reads whole weights. Set fsdp_state_dict_type: FULL_STATE_DICT in the accelerate config "
            "(recipes/accelerate/fsdp.yaml does), and start again."
        )
    return {k.removeprefix("module."): v for k, v in weights.items()}


# Failures to read a checkpoint that say nothing about its files: never advise deleting it.
NOT_DAMAGE: tuple[type[BaseException], ...] = (MemoryError, PermissionError, torch.OutOfMemoryError)


def damaged_checkpoint(path: Path, err: BaseException) -> ModelLoadError:
    """The error for a checkpoint that cannot be read back, naming the earlier ones to use instead."""
    found = complete_checkpoints(path.parent.parent)
    earlier = found[: found.index(path)] if path in found else []
    instead = (
        f"Pass an earlier one with --resume_from_checkpoint {earlier[-1]}"
        if earlier
        else "Start again without --resume_from_checkpoint"
    )
    return ModelLoadError(
        f"Checkpoint {path} cannot be loaded: {err}. It is damaged, was written for other options, "
        "or holds objects that are not plain tensors (refused: unpickling them could run code). "
        f"{instead}, or delete it."
    )


class Checkpointer:
    """Saves, rotates and finds the checkpoints of one output folder."""

    def __init__(self, accelerator: Accelerator, output_dir: Path, total_limit: int) -> None:
        self.accelerator = accelerator
        self.root = checkpoint_root(output_dir)
        self.total_limit = total_limit

    def save(
        self, progress: Progress, state: dict[str, Any], tensors: dict[str, torch.Tensor],
        process_state: dict[str, Any],
    ) -> Path:  # fmt: skip
        """Write everything to a temporary folder, then rename it: all processes must call this.

        Raises :class:`SaveError` when the write fails, after removing the temporary folder.
        """
        final = self.root / f"checkpoint-{progress.global_step}"
        tmp = self.root / f"{TMP_PREFIX}{final.name}"
        # A process that fails here leaves the others waiting at the next barrier; the
        # launcher ends them when this one exits with the error.
        try:
            self._write(tmp, progress, state, tensors, process_state)
            if self.accelerator.is_main_process:
                self._commit(tmp, final)
        except BaseException as err:  # also Ctrl-C: never leave a partial folder behind
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(err, write_errors()):
                raise SaveError(self._failure(progress.global_step, err)) from err
            raise
        self.accelerator.wait_for_everyone()
        logger.info("saved checkpoint %s", final)
        return final

    def _write(
        self, tmp: Path, progress: Progress, state: dict[str, Any], tensors: dict[str, torch.Tensor],
        process_state: dict[str, Any],
    ) -> None:  # fmt: skip
        accelerator = self.accelerator
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        index = accelerator.process_index
        (tmp / f"process_{index}.json").write_text(json.dumps(process_state))
        if accelerator.is_main_process:
            if tensors:
                save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / TENSORS_NAME))
            (tmp / STATE_NAME).write_text(json.dumps({"progress": asdict(progress), **state}, indent=1))
        accelerator.wait_for_everyone()

    def _failure(self, step: int, err: BaseException) -> str:
        found = complete_checkpoints(self.root.parent)
        earlier = f"the latest valid one is {found[-1]}" if found else "none was saved before this one"
        resume = ", then run the same command with --resume_from_checkpoint latest" if found else ""
        return (
            f"Could not write checkpoint {step} to {self.root}: {err} (disk full?). Earlier checkpoints "
            f"are unchanged; {earlier}. Free disk space (a lower --save_total_limit keeps fewer "
            f"checkpoints){resume}."
        )

    def _commit(self, tmp: Path, final: Path) -> None:
        # An epoch-end checkpoint can share its step with a --save_steps one; the newer wins.
        stale = final.with_name(f"{TMP_PREFIX}old-{final.name}")
        if final.exists():
            final.rename(stale)
        try:
            tmp.rename(final)
        except OSError:
            if stale.exists():  # put the older one back: it is still valid
                stale.rename(final)
            raise
        shutil.rmtree(stale, ignore_errors=True)
        for leftover in self.root.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        if self.total_limit:
            for old in complete_checkpoints(self.root.parent)[: -self.total_limit]:
                shutil.rmtree(old, ignore_errors=True)


__all__ = [
    "CHECKPOINTS_DIR",
    "NOT_DAMAGE",
    "Checkpoint",
    "Checkpointer",
    "Progress",
    "checkpoint_weights",
    "complete_checkpoints",
    "damaged_checkpoint",
    "read_checkpoint",
    "resolve_checkpoint",
]
