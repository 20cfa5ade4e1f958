"""The run output folder: where it is, whether it may be used, and what goes in it."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import accelerate
import torch
import transformers

from nlptransfer.checkpoint import CHECKPOINTS_DIR
from nlptransfer.config import FinetuneConfig
from nlptransfer.errors import OutputDirExistsError
from nlptransfer.model import CONFIG_NAME, TransferModel
from nlptransfer.tracking import LOG_NAME
from nlptransfer.version import __version__

RESULTS_NAME = "results.json"
TABLE_NAME = "trainable_layers.md"
RUN_CONFIG_NAME = "run_config.json"
RUN_MARKERS = (RESULTS_NAME, RUN_CONFIG_NAME, CONFIG_NAME, CHECKPOINTS_DIR, LOG_NAME)


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
    return {
        "nlptransfer": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
    }


def write_run(
    output_dir: Path, model: TransferModel, config: FinetuneConfig, results: dict[str, Any], table: str
) -> None:
    """Replace the files of an earlier run (only those) with this run's."""
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in (RESULTS_NAME, TABLE_NAME, RUN_CONFIG_NAME):
        (output_dir / name).unlink(missing_ok=True)
    model.save_pretrained(output_dir)
    (output_dir / TABLE_NAME).write_text(table + "\n")
    config.save(output_dir / RUN_CONFIG_NAME)
    # results.json last: its presence means the run completed.
    tmp = output_dir / f".{RESULTS_NAME}.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(output_dir / RESULTS_NAME)
