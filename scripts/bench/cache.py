"""Section 4: the feature cache, cold against warm, on the default feature-extraction job.

The default job (MiniLM, movie reviews, frozen body) runs twice in fresh processes on
one empty cache folder: the first computes and stores the features of train,
validation and test; the second must read them back and give identical metrics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import REPO, Result

TARGET = 20.0


def run_once(work: Path, name: str, extra: list[str]) -> dict[str, Any]:
    out = work / name
    command = [sys.executable, str(REPO / "recipes" / "finetune.py"), "--cache_dir", str(work / "cache"),
               "--output_dir", str(out), *extra]  # fmt: skip
    subprocess.run(
        command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=REPO, capture_output=True
    )
    return json.loads((out / "results.json").read_text())


def run(options: Any) -> Result:
    with tempfile.TemporaryDirectory(prefix="bench-feature-cache-") as tmp:
        cold = run_once(Path(tmp), "cold", options.cache_args)
        warm = run_once(Path(tmp), "warm", options.cache_args)
    same = cold["test"] == warm["test"] and cold["history"] == warm["history"]
    hits = warm["feature_cache"]["hits"]
    first, second = cold["feature_extraction_seconds"], warm["feature_extraction_seconds"]
    return Result(
        section="cache",
        what="feature extraction of train + validation + test (12,752 texts), default job",
        ours=f"{second:.2f} s warm (cache hit)",
        peer=f"{first:.1f} s cold (computed)",
        ratio=first / max(second, 1e-9),
        target=TARGET,
        details={
            "identical_metrics": same,
            "hits": hits,
            "test": warm["test"],
            "train_seconds": [cold["train_seconds"], warm["train_seconds"]],
        },
    )
