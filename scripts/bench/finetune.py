"""Section 2: fine-tuning throughput, peak memory and accuracy against transformers ``Trainer``.

Three runs, each in a fresh process (``finetune_worker.py``), on the built-in movie
reviews with the same MiniLM weights, batch size, epochs, learning rate and max_length:
nlptransfer, ``Trainer`` as ``run_glue.py`` sets it up by default, and ``Trainer`` at its
best settings (dynamic padding, length-grouped batches). Throughput is training samples
per second of the training loop (the median of ``--repeats`` runs on ``--ft_examples``
samples); accuracy (fixed test split) and peak memory come from one run of each on the
full training split. ``--ft_device cuda --mixed_precision bf16`` runs the same on a GPU.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from typing import Any

from common import REPO, Result

TARGETS = {"trainer-default": 1.5, "trainer-best": 1.0}
MODES = ("ours", *TARGETS)


def one(mode: str, options: dict[str, Any]) -> dict[str, Any]:
    command = [sys.executable, str(REPO / "scripts/bench/finetune_worker.py"), mode, json.dumps(options)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"finetune worker {mode} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"  {mode}: {result['samples'] / result['loop_seconds']:.1f} samples/s "
        f"({result['samples']} samples), test accuracy {result['test_accuracy']:.4f}",
        flush=True,
    )
    return result


def _device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def run(options: Any) -> list[Result]:
    base = {
        "epochs": options.ft_epochs,
        "batch_size": 32,
        "lr": 5e-5,
        "max_length": options.max_length,
        "seed": 42,
        "device": _device(options.ft_device),
        "mixed_precision": options.mixed_precision,
    }
    # Throughput: repeats on a fixed subset, interleaved so that a noisy minute hits every tool.
    speed: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for _ in range(options.repeats):
        for mode in MODES:
            speed[mode].append(one(mode, {**base, "max_train_examples": options.ft_examples or None}))
    # Accuracy and peak memory: one run of each on the full training split.
    full = {
        mode: one(mode, {**base, "max_train_examples": options.ft_accuracy_examples or None})
        for mode in MODES
    }
    rates = {
        mode: statistics.median(r["samples"] / r["loop_seconds"] for r in runs)
        for mode, runs in speed.items()
    }
    what = (
        f"MiniLM, all layers, batch 32, LR 5e-5, max_length {base['max_length']}, {base['device']}, "
        f"mixed precision {base['mixed_precision']}; samples/s: median of {options.repeats} runs on "
        f"{speed['ours'][0]['samples']} samples; accuracy and memory: {full['ours']['samples']} samples"
    )
    rows = []
    for mode, target in TARGETS.items():
        details = {
            "speed": {m: speed[m] for m in ("ours", mode)},
            "full": {m: full[m] for m in ("ours", mode)},
            "settings": base,
        }
        rows.append(
            Result(
                f"finetune vs {mode}",
                what,
                _describe(rates["ours"], full["ours"]),
                _describe(rates[mode], full[mode]),
                rates["ours"] / rates[mode],
                target,
                details,
                # run_glue's target holds at equal or better accuracy and no more memory.
                condition=_no_worse(full["ours"], full[mode]) if mode == "trainer-default" else True,
            )
        )
    return rows


def _memory(run: dict[str, Any]) -> float:
    return run["peak_gpu_mb"] if run.get("peak_gpu_mb") is not None else run["peak_rss_mb"]


def _no_worse(ours: dict[str, Any], peer: dict[str, Any]) -> bool:
    return ours["test_accuracy"] >= peer["test_accuracy"] and _memory(ours) <= _memory(peer)


def _describe(rate: float, run: dict[str, Any]) -> str:
    memory = f"peak GPU {run['peak_gpu_mb']:.0f} MB, " if run.get("peak_gpu_mb") is not None else ""
    return (
        f"{rate:.1f} samples/s, test accuracy {run['test_accuracy']:.4f}, {memory}"
        f"peak RSS {run['peak_rss_mb']:.0f} MB"
    )
