"""Benchmark the feature cache: the default feature-extraction job twice, on one fresh cache.

    HF_HUB_OFFLINE=1 python scripts/bench_feature_cache.py            # MiniLM on movie reviews
    HF_HUB_OFFLINE=1 python scripts/bench_feature_cache.py --max_train_examples 500   # quick look

Extra arguments go to both runs of ``recipes/finetune.py``. The first run computes
and caches the body features; the second must read them back, skip the body,
and end with identical test metrics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GOAL = 20.0


def run_once(work: Path, name: str, extra: list[str]) -> tuple[dict[str, Any], float]:
    """One run of the recipe in a fresh process; its results.json and wall seconds."""
    out = work / name
    command = [
        sys.executable, str(REPO / "recipes" / "finetune.py"),
        "--cache_dir", str(work / "cache"), "--output_dir", str(out), *extra,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=REPO)
    wall = time.perf_counter() - start
    return json.loads((out / "results.json").read_text()), wall


def report(first: dict[str, Any], second: dict[str, Any], walls: tuple[float, float]) -> bool:
    cold, warm = first["feature_extraction_seconds"], second["feature_extraction_seconds"]
    speedup = cold / max(warm, 1e-9)
    same = first["test"] == second["test"] and first["history"] == second["history"]
    hits = second["feature_cache"]["hits"]
    print(f"feature extraction, first run (cache miss): {cold:8.2f} s")
    print(f"feature extraction, second run (cache hit): {warm:8.2f} s")
    print(f"speed-up: {speedup:.1f}x (goal: >= {GOAL:.0f}x)")
    print(f"train_seconds: {first['train_seconds']:.1f} s -> {second['train_seconds']:.1f} s")
    print(f"wall time of the command: {walls[0]:.1f} s -> {walls[1]:.1f} s")
    print(f"second run cache hits: {hits}")
    print(f"test metrics identical: {same}  {second['test']}")
    return same and all(hits.values()) and speedup >= GOAL


def main(extra: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-feature-cache-") as tmp:
        work = Path(tmp)
        first, first_wall = run_once(work, "first", extra)
        second, second_wall = run_once(work, "second", extra)
    return 0 if report(first, second, (first_wall, second_wall)) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
