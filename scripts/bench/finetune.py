"""Section 2: fine-tuning throughput, peak memory and accuracy against transformers ``Trainer``.

Three runs, each in a fresh process (``finetune_worker.py``), on the built-in movie
reviews with the same MiniLM weights, batch size, epochs, learning rate and max_length:
nlptransfer, ``Trainer`` as ``run_glue.py`` sets it up by default, and ``Trainer`` at its
best settings (dynamic padding, length-grouped batches). Throughput is training samples
per second of the training loop; accuracy is on the fixed test split.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from common import REPO, Result

TARGETS = {"trainer-default": 1.5, "trainer-best": 1.0}


def one(mode: str, options: dict[str, Any]) -> dict[str, Any]:
    command = [sys.executable, str(REPO / "scripts/bench/finetune_worker.py"), mode, json.dumps(options)]
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(options: Any) -> list[Result]:
    settings = {"epochs": options.ft_epochs, "batch_size": 32, "lr": 5e-5, "max_length": options.max_length,
                "seed": 42, "max_train_examples": options.ft_examples}  # fmt: skip
    runs = {mode: one(mode, settings) for mode in ("ours", *TARGETS)}
    mine = runs["ours"]
    rate = mine["samples"] / mine["train_seconds"]
    what = (f"MiniLM, all layers, {mine['samples']} training samples ({settings['epochs']} epoch), "
            f"batch 32, LR 5e-5, max_length {settings['max_length']}")  # fmt: skip
    rows = []
    for mode, target in TARGETS.items():
        peer = runs[mode]
        peer_rate = peer["samples"] / peer["train_seconds"]
        details = {"ours": mine, "peer": peer, "settings": settings}
        rows.append(Result(f"finetune vs {mode}", what, _describe(rate, mine), _describe(peer_rate, peer),
                           rate / peer_rate, target, details))  # fmt: skip
    return rows


def _describe(rate: float, run: dict[str, Any]) -> str:
    accuracy, rss = run["test_accuracy"], run["peak_rss_mb"]
    return f"{rate:.1f} samples/s, test accuracy {accuracy:.4f}, peak RSS {rss:.0f} MB"
