"""Section partial: top-K fine-tuning with and without the activation cache, and against Trainer.

Three whole processes, timed from outside on the same cores, interleaved over ``--repeats``
(medians reported): `nlptransfer train --strategy finetune --unfreeze_layers K` with the
activation cache (cold: an empty cache folder, so the frozen bottom's states are computed in the
run) and with ``--no-activation_cache``, and transformers ``Trainer`` (dynamic padding,
length-grouped batches) with the same layers frozen (``finetune_worker.py trainer-best``). All
three: MiniLM, the same ``--partial_examples`` movie reviews (0: all), batch 32, LR 1e-4 for the
head and the top layers alike, no warmup or weight decay, max_length 128, 3 epochs by default,
the validation split scored after every epoch, the test split at the end.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import REPO, Result
from endtoend import timed

# Acceptance: cached >= 1.8x faster than uncached, >= 2x faster than Trainer with the same layers frozen.
TARGETS = {"uncached": 1.8, "trainer": 2.0}


def _ours(work: Path, options: Any, cached: bool) -> list[str]:
    command = [
        str(Path(sys.executable).parent / "nlptransfer"), "train", "--strategy", "finetune",
        "--unfreeze_layers", str(options.partial_layers), "--epochs", str(options.partial_epochs),
        "--learning_rate", "1e-4", "--body_lr_scale", "1", "--warmup_ratio", "0", "--weight_decay", "0",
        "--batch_size", "32", "--max_length", "128", "--seed", "42", "--output_dir", str(work / "run"),
        "--overwrite_output_dir", "--cache_dir", str(work / "cache"), "--report_to", "none",
    ]  # fmt: skip
    if options.partial_examples:
        command += ["--max_train_examples", str(options.partial_examples)]
    return command if cached else [*command, "--no-activation_cache"]


def _trainer(options: Any) -> list[str]:
    settings = {"epochs": options.partial_epochs, "batch_size": 32, "lr": 1e-4, "max_length": 128, "seed": 42,
                "device": "cpu", "mixed_precision": "no", "unfreeze_layers": options.partial_layers,
                "validate": True, "max_train_examples": options.partial_examples or None}  # fmt: skip
    worker = str(REPO / "scripts/bench/finetune_worker.py")
    return [sys.executable, worker, "trainer-best", json.dumps(settings)]


def run(options: Any) -> list[Result]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    seconds: dict[str, list[float]] = {"cached": [], "uncached": [], "trainer": []}
    accuracy: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-partial-") as tmp:
        for repeat in range(options.repeats):
            for name in seconds:
                work = Path(tmp) / f"{name}-{repeat}"  # a fresh, empty cache folder: a cold run
                command = _trainer(options) if name == "trainer" else _ours(work, options, name == "cached")
                took, out = timed(command, env)
                seconds[name].append(took)
                if name == "trainer":
                    accuracy[name] = json.loads(out.strip().splitlines()[-1])["test_accuracy"]
                else:
                    results = json.loads((work / "run" / "results.json").read_text())
                    accuracy[name] = results["test"]["accuracy"]
                    if name == "cached":
                        assert results["activation_cache"]["phases"][0]["used"], results["activation_cache"]
                print(f"  {name}: {took:.1f} s, test accuracy {accuracy[name]:.4f}", flush=True)
    median = {name: statistics.median(times) for name, times in seconds.items()}
    examples = options.partial_examples or "all"
    details: dict[str, Any] = {"seconds": seconds, "median_seconds": median, "test_accuracy": accuracy}
    return [
        Result(
            section="partial",
            what=f"MiniLM, top {options.partial_layers} layers, {options.partial_epochs} epochs, {examples} "
            f"movie reviews: whole process, cached (cold) against {peer}; median of {options.repeats}",
            ours=f"{median['cached']:.1f} s (acc. {accuracy['cached']:.4f})",
            peer=f"{median[peer]:.1f} s (acc. {accuracy[peer]:.4f})",
            ratio=median[peer] / median["cached"],
            target=target,
            details=details,
        )
        for peer, target in TARGETS.items()
    ]
