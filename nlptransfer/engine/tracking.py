"""Experiment tracking through accelerate's trackers.

A JSONL log always; TensorBoard when installed; any other tracker accelerate
supports (wandb, mlflow, ...) when the user asks for it and its package is there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import accelerate.utils.imports as accelerate_imports
from accelerate.tracking import GeneralTracker, on_main_process
from accelerate.utils import is_tensorboard_available

from nlptransfer.errors import ConfigError

logger = logging.getLogger(__name__)

LOG_NAME = "training_log.jsonl"
PLOT_NAME = "training_curves.png"
LOGS_DIR = "logs"
# The pip package of each accelerate tracker whose name differs from it.
_PACKAGES = {"comet_ml": "comet-ml"}


class JSONLTracker(GeneralTracker):
    """One JSON object per ``accelerator.log`` call: ``{"step": ..., "time": ..., **values}``.

    On resume the lines written after the checkpoint's step are dropped first,
    so the log reads as one uninterrupted run.
    """

    name = "jsonl"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.resume_step = resume_step
        self._file: Any = None

    @property
    def tracker(self) -> Any:
        return self._file

    @on_main_process
    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.resume_step is None:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            kept = [line for line in read_log(self.path) if line.get("step", 0) <= self.resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._file = self.path.open("a")

    def store_init_configuration(self, values: dict) -> None:
        pass  # the run's config is saved next to the model (run_config.json)

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        if self._file is None:  # stopped after a failed write
            return
        record = {"step": step, "time": round(time.time(), 3), **values}
        try:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        except OSError as err:
            # A log is worth less than the run: keep training, so the checkpoint and model saves
            # get their chance (and report a full disk clearly if they fail too).
            logger.warning(
                "Could not write the training log %s: %s. Logging to it stops here.", self.path, err
            )
            self.finish()

    @on_main_process
    def finish(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            with contextlib.suppress(OSError):  # flushing the last line can fail on a full disk too
                file.close()


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL log; a line cut short by a killed process is skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def build_trackers(names: list[str], output_dir: Path, resume_step: int | None) -> list[Any]:
    """What to pass as ``Accelerator(log_with=...)``: tracker objects and accelerate tracker names."""
    trackers: list[Any] = []
    if "jsonl" in names:
        trackers.append(JSONLTracker(Path(output_dir) / LOG_NAME, resume_step))
    if "tensorboard" in names:
        if is_tensorboard_available():
            trackers.append("tensorboard")
        else:  # on by default: its absence is no error
            logger.info(
                "TensorBoard is not installed: logging to %s only (pip install tensorboard).", LOG_NAME
            )
    for name in [n for n in names if n not in ("jsonl", "tensorboard")]:
        check_tracker_installed(name)
        trackers.append(name)
    return trackers


def check_tracker_installed(name: str) -> None:
    """An accelerate tracker the user asked for must be importable, or the run stops before it starts."""
    available = getattr(accelerate_imports, f"is_{name}_available", None)
    if available is None:
        raise ConfigError(f"--report_to {name}: this version of accelerate has no such tracker.")
    if not available():
        package = _PACKAGES.get(name, name)
        raise ConfigError(
            f"--report_to {name} needs the {package} package, which is not installed: pip install "
            f"{package}, or drop {name} from --report_to."
        )


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """TensorBoard's hparams take only scalars and strings."""
    return {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in config.items()}


def plot_curves(log_path: Path, png_path: Path, metric: str | None = None) -> Path | None:
    """Training loss and learning rate per step, validation metric per epoch, as one PNG (None when
    nothing trained by steps: a closed-form head's single score is in results.json)."""
    if not Path(log_path).is_file():
        return None
    records = read_log(log_path)
    steps = [r for r in records if "train/loss" in r]
    epochs = [r for r in records if any(k.startswith("validation/") for k in r)]
    if not steps and len(epochs) < 2:  # a head fitted in closed form: no curve to draw (and 1 s saved)
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    _panel(axes[0], steps, "train/loss", "training loss", "optimizer step")
    _panel(axes[1], steps, "train/learning_rate", "learning rate", "optimizer step")
    keys = sorted({k for r in epochs for k in r if k.startswith("validation/")})
    shown = f"validation/{metric}" if metric and f"validation/{metric}" in keys else (keys or [None])[0]
    _panel(axes[2], epochs, shown, shown or "validation", "optimizer step", marker="o")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return Path(png_path)


def _panel(
    ax: Any, records: list[dict[str, Any]], key: str | None, title: str, xlabel: str, **style: Any
) -> None:
    points = [(r["step"], r[key]) for r in records if key and key in r and r.get("step") is not None]
    if points:
        ax.plot(*zip(*points, strict=True), **style)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)


__all__ = [
    "LOG_NAME",
    "PLOT_NAME",
    "JSONLTracker",
    "build_trackers",
    "check_tracker_installed",
    "flat_config",
    "plot_curves",
    "read_log",
]
