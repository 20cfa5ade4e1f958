"""The run output folder: where it is, whether it may be used, and what goes in it."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState

from nlptransfer.checkpoint import CHECKPOINTS_DIR
from nlptransfer.config import FinetuneConfig
from nlptransfer.errors import OutputDirExistsError, SaveError, write_errors
from nlptransfer.model import CONFIG_NAME, TransferModel
from nlptransfer.tracking import LOG_NAME
from nlptransfer.version import __version__

RESULTS_NAME = "results.json"
TABLE_NAME = "trainable_layers.md"
RUN_CONFIG_NAME = "run_config.json"
RUN_MARKERS = (RESULTS_NAME, RUN_CONFIG_NAME, CONFIG_NAME, CHECKPOINTS_DIR, LOG_NAME)
# Distributions whose versions results.json records (those installed).
PACKAGES = (
    "torch", "transformers", "accelerate", "peft", "datasets", "safetensors", "numpy", "scikit-learn",
    "gensim",
)  # fmt: skip


def resolve_output_dir(config: FinetuneConfig) -> Path:
    if config.output_dir:
        return Path(config.output_dir)
    data = Path(config.train_file).stem if config.train_file else config.dataset
    model = Path(config.model.rstrip("/")).name
    return Path("runs") / f"{data}-{model}-{config.strategy}"


def check_output_dir(path: Path, overwrite: bool) -> None:
    """Refuse a folder holding another run (unless ``overwrite``), unrelated files, or a file."""
    if path.exists() and not path.is_dir():
        raise OutputDirExistsError(f"--output_dir '{path}' is a file; pass a folder path.")
    if not path.exists() or not any(path.iterdir()):
        return
    if not any((path / marker).exists() for marker in RUN_MARKERS):
        raise OutputDirExistsError(
            f"Output folder '{path}' is not empty and holds no earlier run; choose a new or empty "
            "--output_dir (nlptransfer never deletes files it did not write)."
        )
    unfinished = (path / CHECKPOINTS_DIR).is_dir() and not (path / RESULTS_NAME).exists()
    if unfinished and not overwrite:
        raise OutputDirExistsError(
            f"Output folder '{path}' holds checkpoints of a run that did not finish. Pass "
            "--resume_from_checkpoint latest to continue it, --overwrite_output_dir to start over, "
            "or choose another --output_dir."
        )
    if not overwrite:
        raise OutputDirExistsError(
            f"Output folder '{path}' already holds a run. Pass --overwrite_output_dir to replace "
            "it, or choose another --output_dir."
        )


def versions() -> dict[str, str]:
    """Python, nlptransfer and the installed packages a run's numbers depend on."""
    found = {"nlptransfer": __version__, "python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def hardware() -> dict[str, str]:
    """The device of this process's accelerate state, and how many processes ran."""
    state = PartialState()
    name = str(state.device)
    if state.device.type == "cuda":
        name = f"{name} ({torch.cuda.get_device_name(state.device)})"
    return {"device": name, "num_processes": str(state.num_processes)}


def write_run(
    output_dir: Path, model: TransferModel, config: FinetuneConfig, results: dict[str, Any], table: str
) -> None:
    """Replace the files of an earlier run (only those) with this run's.

    Every new file is written in full before an old one goes, so a failure (a
    full disk) raises :class:`SaveError` and leaves the earlier run as it was.
    """
    staged = _stage(output_dir, config, results, table)
    # Set aside, not deleted: results.json marks a completed run, so it must not sit next
    # to a new model, yet it comes back if the model cannot be saved.
    done, aside = output_dir / RESULTS_NAME, output_dir / f".{RESULTS_NAME}.old"
    if done.exists():
        os.replace(done, aside)
    try:
        model.save_pretrained(output_dir)
    except BaseException as err:  # also Ctrl-C: the earlier run must come back
        if aside.exists():
            os.replace(aside, done)
        _remove(staged.values())
        if isinstance(err, SaveError) or not isinstance(err, write_errors()):
            raise
        raise SaveError(
            f"Could not save the model to {output_dir}: {err} (disk full?). An earlier run in that "
            "folder is unchanged."
        ) from err
    for name, path in staged.items():  # results.json last: its presence means the run completed
        os.replace(path, output_dir / name)
    aside.unlink(missing_ok=True)


def _stage(output_dir: Path, config: FinetuneConfig, results: dict[str, Any], table: str) -> dict[str, Path]:
    """This run's small files, written under temporary names next to where they go."""
    staged = {name: output_dir / f".{name}.tmp" for name in (TABLE_NAME, RUN_CONFIG_NAME, RESULTS_NAME)}
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        staged[TABLE_NAME].write_text(table + "\n")
        config.save(staged[RUN_CONFIG_NAME])
        staged[RESULTS_NAME].write_text(json.dumps(results, indent=2))
    except OSError as err:
        _remove(staged.values())
        raise SaveError(
            f"Could not write the results of this run to {output_dir}: {err} (disk full?). Nothing there "
            "was replaced: an earlier run in that folder is unchanged."
        ) from err
    return staged


def _remove(paths: Iterable[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
