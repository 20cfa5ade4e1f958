"""The run output folder: where it is, whether it may be used, and what goes in it."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState

from nlptransfer.config import FinetuneConfig
from nlptransfer.engine.checkpoint import CHECKPOINTS_DIR
from nlptransfer.engine.tracking import LOG_NAME
from nlptransfer.errors import OutputDirExistsError
from nlptransfer.files import replace_files
from nlptransfer.model.transfer import CONFIG_NAME, TransferModel
from nlptransfer.runs.modelcard import CardInfo, write_card
from nlptransfer.tasks.calibration import plot_reliability
from nlptransfer.version import __version__

logger = logging.getLogger(__name__)

# Fallback start of the wall clock where /proc is missing (macOS, Windows): when this module was
# first imported, which is early in every recipe (after Python, torch and accelerate start up).
_IMPORTED_AT = time.time()

RESULTS_NAME = "results.json"
TABLE_NAME = "trainable_layers.md"
RUN_CONFIG_NAME = "run_config.json"
RELIABILITY_NAME = "reliability.png"
RUN_MARKERS = (RESULTS_NAME, RUN_CONFIG_NAME, CONFIG_NAME, CHECKPOINTS_DIR, LOG_NAME)
# Distributions whose versions results.json records (those installed).
PACKAGES = (
    "torch", "transformers", "accelerate", "peft", "datasets", "safetensors", "numpy", "scikit-learn",
    "gensim", "onnxruntime", "onnx",
)  # fmt: skip


def resolve_output_dir(config: Any, pattern: str = "{data}-{model}-{config.strategy}") -> Path:
    """``--output_dir``, else ``runs/<pattern>``: the data's and the model's names and what the run
    does (fine-tuning: the strategy; pretraining passes ``"{model}-adapted-{data}"``)."""
    if config.output_dir:
        return Path(config.output_dir)
    data = Path(config.train_file).stem if config.train_file else config.dataset
    model = Path(config.model.rstrip("/")).name
    return Path("runs") / pattern.format(data=data, model=model, config=config)


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


def hardware() -> dict[str, Any]:
    """The machine a run's timings come from: accelerate's device and process count, the CPU, its
    cores and memory, torch's threads, and the 1-minute load average when this is called (a figure
    well above the core count means the timings were taken on a busy machine)."""
    state = PartialState()
    name = str(state.device)
    if state.device.type == "cuda":
        name = f"{name} ({torch.cuda.get_device_name(state.device)})"
    machine: dict[str, Any] = {
        "device": name,
        "num_processes": str(state.num_processes),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": memory_gb(),
        "platform": platform.platform(),
    }
    machine["load_average_1min"] = load_average()
    # 5 and 15 minutes: a long run's last minute says little about the load during the run.
    machine["load_average_5min"], machine["load_average_15min"] = load_average(1), load_average(2)
    return machine


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gb() -> float | None:
    """Physical memory in GB (10^9 bytes), or None where the OS does not say."""
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (AttributeError, ValueError, OSError):
        return None


def load_average(which: int = 0) -> float | None:
    """The 1-minute (``which`` 1: 5-, 2: 15-minute) load average; None where the OS has none (Windows)."""
    try:
        return round(os.getloadavg()[which], 2)
    except (AttributeError, OSError):
        return None


def process_start() -> tuple[float, str]:
    """When this process started (epoch seconds) and how that is known.

    Linux: field 22 of /proc/self/stat, the start in clock ticks after boot, against
    /proc/uptime; this includes Python's, torch's and accelerate's start-up (but not that of
    an ``accelerate launch`` parent, which starts this process). Elsewhere: when this module
    was first imported.
    """
    try:
        stat = Path("/proc/self/stat").read_text()
        # The command name (field 2) may hold spaces and parentheses: count fields after its ")".
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - uptime + start_ticks / os.sysconf("SC_CLK_TCK"), "process start"
    except (OSError, ValueError, IndexError, AttributeError):
        return _IMPORTED_AT, "nlptransfer import"


def peak_rss_mb() -> float | None:
    """This process's peak resident set size in MB (10^6 bytes); None without ``resource`` (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in kilobytes (KiB) on Linux and the BSDs, in bytes on macOS.
    peak_bytes = peak if sys.platform == "darwin" else peak * 1024
    return round(peak_bytes / 1e6, 1)


def cpu_seconds() -> float | None:
    """User + system CPU time of this process so far. Divided by ``wall_seconds`` it gives the cores
    the process had on average: well below its torch threads means other work took the CPU."""
    try:
        import resource
    except ImportError:
        return None
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return round(usage.ru_utime + usage.ru_stime, 1)


def resource_usage(run_start: float | None = None) -> dict[str, Any]:
    """For results.json: wall time from the process's start to now, the peak RSS and CPU time so far.

    Both count the whole process: a script that runs several trainings in one process (``compare``,
    the vision demo) gets the time and memory of all of them up to this one. ``run_start``
    (a ``time.time()``) adds ``run_wall_seconds``, the time of this run alone.
    """
    started, clock = process_start()
    now = time.time()
    usage: dict[str, Any] = {
        "wall_seconds": round(now - started, 3),
        "wall_clock_from": clock,
        "peak_rss_mb": peak_rss_mb(),
        "cpu_seconds": cpu_seconds(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)),
    }
    if run_start is not None:
        usage["run_wall_seconds"] = round(now - run_start, 3)
    return usage


def source_commit(package: Path | None = None) -> dict[str, Any] | None:
    """The git commit of the nlptransfer checkout that ran, and whether its code differed from it.

    ``modified`` lists the tracked files under nlptransfer/, recipes/ and scripts/ that differ from
    the commit (uncommitted edits that the run used; new untracked files are not listed). None
    when nlptransfer is not in a git checkout (an installed wheel) or git is missing.
    """
    root = (package or Path(__file__).resolve().parents[1]).resolve().parent  # package: nlptransfer/

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20, check=True
        )
        return done.stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root:
            return None
        commit = git("rev-parse", "HEAD")
        changed = git("diff", "--name-only", "HEAD", "--", "nlptransfer", "recipes", "scripts")
    except (OSError, subprocess.SubprocessError):
        return None
    modified = sorted(line for line in changed.splitlines() if line)
    return {"commit": commit, "modified": modified}


def _draw_reliability(calibration: dict[str, Any] | None, path: Path) -> None:
    """The reliability diagram of a calibrated run; a drawing failure costs the picture, not the run."""
    if not calibration or "bins_after" not in calibration:
        return
    try:
        plot_reliability(calibration, path)
    except (ImportError, OSError, ValueError) as err:
        logger.warning("Could not draw the reliability diagram to %s: %s", path, err)


def write_run(
    output_dir: Path, model: TransferModel, config: FinetuneConfig, results: dict[str, Any], table: str,
    card: CardInfo | None = None, weights: dict[str, torch.Tensor] | None = None,
) -> None:  # fmt: skip
    """Replace the files of an earlier run (only those) with this run's (``weights``: the model's,
    gathered, when its own parameters are shards).

    Every new file is written in full before an old one goes, so a failure (a full disk)
    raises :class:`SaveError` and leaves the earlier run as it was. The small files are
    written before the model; results.json, whose presence marks a completed run, goes in last.
    """
    kept = "An earlier run in that folder is unchanged."
    with replace_files(output_dir, "this run", kept, markers=(CONFIG_NAME, RESULTS_NAME)) as staging:
        (staging / TABLE_NAME).write_text(table + "\n")
        config.save(staging / RUN_CONFIG_NAME)
        (staging / RESULTS_NAME).write_text(json.dumps(results, indent=2))
        _draw_reliability(results.get("calibration"), staging / RELIABILITY_NAME)
        model.save_pretrained(staging, weights)
        if card is not None:
            write_card(staging, card)
