"""Few-shot comparison, side by side: SetFit against nlptransfer's strategies.

    bash scripts/setfit_env.sh                      # once: SetFit in .venv-setfit, never in the main venv
    python scripts/compare_setfit.py                # K = 8 and 16, seeds 0 1 2, every method below
    python scripts/compare_setfit.py --k 8 --seeds 0 --only setfit feature-extraction
    python scripts/compare_setfit.py --output all.json --reuse earlier.json   # measure only what is missing
    python scripts/compare_setfit.py --reuse docs/few-shot-runs.json --table_only   # the measured table

For each K and seed the script draws K training examples per label from the built-in
movie-review corpus with nlptransfer's own ``--samples_per_label K --seed s`` sampling,
writes them (and the full 1276-example test split) to CSV files, and gives the same
files to SetFit (``scripts/setfit_worker.py`` inside ``.venv-setfit``) and to
``recipes/finetune.py`` for each strategy in METHODS. It prints a markdown table of
test accuracy (mean +- std over seeds) and training time.

nlptransfer picks its best epoch on a validation split and SetFit uses none;
``--validation`` says which examples nlptransfer gets for that (see VALIDATION_MODES).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SETFIT = "setfit"

# nlptransfer methods: name -> recipe flags. A strategy or flag this checkout does not
# know is skipped with a note, so the table picks up new strategies when they land.
METHODS: dict[str, list[str]] = {
    "feature-extraction": ["--strategy", "feature-extraction"],
    # The linear head's defaults take one step per epoch at K=8: a closed-form head fits instead.
    "feature-extraction-logreg": ["--strategy", "feature-extraction", "--head", "logistic-cv"],
    "finetune": ["--strategy", "finetune"],
    # Defaults are tuned for thousands of examples (2 epochs of batch 32 is 2 steps at K=8);
    # few-shot fine-tuning needs many more, smaller steps.
    "finetune-fewshot": ["--strategy", "finetune", "--epochs", "10", "--batch_size", "8"],
    # The defaults: every pair within steps of 16 examples, 8 epochs at 1e-4, a logistic-regression head.
    "contrastive": ["--strategy", "contrastive", "--head", "logistic-cv"],
    # The top 2 of MiniLM's 6 layers only: the 4 below run once per example (the activation cache).
    "contrastive-top2": ["--strategy", "contrastive", "--head", "logistic-cv", "--unfreeze_layers", "2"],
    # SetFit 1.x's pairs and schedule, in nlptransfer: pairs drawn up front, 1 epoch at 2e-5.
    "contrastive-oversampling": ["--strategy", "contrastive", "--pair_sampling", "oversampling"],
    # What a user gets without choosing (contrastive below 100 examples per label).
    "auto": ["--strategy", "auto"],
    "lp-ft": ["--strategy", "lp-ft"],
    "lora": ["--strategy", "lora"],
}

VALIDATION_MODES = {
    "k": "K other examples per label from the validation split (as many dev as training labels)",
    "train": "the training examples themselves (no labelled data beyond SetFit's)",
    "full": "the whole built-in validation split (1275 examples)",
}

# A usage error of the recipe's argparse (unknown or mistyped flag), or an unregistered strategy.
UNKNOWN_MARKERS = ("finetune.py: error:", "Unknown strategy")


@dataclass
class Run:
    method: str
    k: int
    seed: int
    accuracy: float
    train_seconds: float
    details: dict = field(default_factory=dict)


@dataclass
class Outcome:
    runs: list[Run] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: set[str] = field(default_factory=set)


# --------------------------------------------------------------------------- data


def write_split_files(k: int, seed: int, validation: str, folder: Path) -> dict[str, Path]:
    """train / validation / test CSVs for one (K, seed); the train sample is nlptransfer's own."""
    from nlptransfer.config import FinetuneConfig
    from nlptransfer.data.prepare import load_data

    data = load_data(FinetuneConfig(samples_per_label=k, seed=seed))
    assert data.test is not None, "the built-in corpus has a fixed test split"
    frames = {
        "train": _frame(data.train.inputs, data.train.labels, data.label_names),
        "test": _frame(data.test.inputs, data.test.labels, data.label_names),
    }
    held_out = _frame(data.validation.inputs, data.validation.labels, data.label_names)
    frames["validation"] = _validation_frame(validation, held_out, frames["train"], k, seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"{name}.csv" for name in frames}
    for name, frame in frames.items():
        frame.to_csv(paths[name], index=False)
    return paths


def _frame(texts: list[str], labels: list[int], names: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"text": texts, "label": [names[y] for y in labels]})


def _validation_frame(
    mode: str, held_out: pd.DataFrame, train: pd.DataFrame, k: int, seed: int
) -> pd.DataFrame:
    if mode == "train":
        return train
    if mode == "full":
        return held_out
    return held_out.groupby("label", group_keys=False).sample(n=k, random_state=seed).reset_index(drop=True)


# --------------------------------------------------------------------------- runners


def _env(cache_dir: Path | None = None) -> dict[str, str]:
    # PYTHONPATH: the recipe runs this checkout's code even when another one is installed.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    if cache_dir is not None:
        # A fresh feature cache per run: features cached by an earlier run would make a
        # frozen-body run's train_seconds look cheaper than SetFit's, which encodes every time.
        env["NLPTRANSFER_CACHE_DIR"] = str(cache_dir)
    return env


def run_setfit(paths: dict[str, Path], k: int, seed: int, args: argparse.Namespace) -> Run:
    output = paths["train"].parent / "setfit.json"
    command = [
        str(args.setfit_python),
        str(REPO / "scripts" / "setfit_worker.py"),
        "--train",
        str(paths["train"]),
    ]
    command += ["--test", str(paths["test"]), "--output", str(output), "--seed", str(seed)]
    command += ["--threads", str(args.threads)]
    if args.setfit_iterations is not None:
        command += ["--num_iterations", str(args.setfit_iterations)]
    done = subprocess.run(
        command, env=_env(), capture_output=True, text=True, timeout=args.timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"SetFit failed (K={k}, seed={seed}):\n{done.stderr[-3000:]}")
    result = json.loads(output.read_text())
    return Run(SETFIT, k, seed, result["accuracy"], result["train_seconds"], result)


def run_nlptransfer(
    method: str, paths: dict[str, Path], k: int, seed: int, args: argparse.Namespace
) -> Run | str:
    """One recipe run; a string says why the method was skipped (unknown strategy or flag)."""
    output_dir = paths["train"].parent / method
    cache_dir = output_dir.with_name(f"{method}-feature-cache")
    # Cold every time: a rerun in the same --workdir must not read what an earlier one cached.
    shutil.rmtree(cache_dir, ignore_errors=True)
    command = [sys.executable, str(REPO / "recipes" / "finetune.py"), *METHODS[method]]
    command += ["--train_file", str(paths["train"]), "--validation_file", str(paths["validation"])]
    command += ["--test_file", str(paths["test"]), "--samples_per_label", str(k), "--seed", str(seed)]
    command += ["--output_dir", str(output_dir), "--overwrite_output_dir", "--num_threads", str(args.threads)]
    command += ["--cpu"]
    done = subprocess.run(
        command,
        env=_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=args.timeout,
        check=False,
    )
    if done.returncode != 0:
        error = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        if any(marker in done.stderr for marker in UNKNOWN_MARKERS):
            return f"{method}: skipped, this checkout's recipe rejects it ({error})"
        raise RuntimeError(f"{method} failed (K={k}, seed={seed}):\n{done.stderr[-3000:]}")
    results = json.loads((output_dir / "results.json").read_text())
    keys = ("best_epoch", "epochs_run", "feature_extraction_seconds", "feature_extraction_seconds_by_split")
    details = {key: results.get(key) for key in keys}
    details["num_validation_examples"] = results.get("num_validation_examples")
    return Run(method, k, seed, results["test"]["accuracy"], results["train_seconds"], details)


def run_all(args: argparse.Namespace, workdir: Path) -> Outcome:
    outcome = Outcome(runs=load_runs(args.reuse) if args.reuse else [])
    measured = {(r.method, r.k, r.seed) for r in outcome.runs}
    methods = [m for m in [SETFIT, *METHODS] if not args.only or m in args.only]
    for k in args.k:
        for seed in args.seeds:
            todo = [m for m in methods if (m, k, seed) not in measured and not args.table_only]
            if not todo:
                continue
            paths = write_split_files(k, seed, args.validation, workdir / f"k{k}-seed{seed}")
            for method in todo:
                if method in outcome.skipped:
                    continue
                _run_one(method, paths, k, seed, args, outcome)
                _save(outcome, args)
    return outcome


def load_runs(path: Path) -> list[Run]:
    """Runs of an earlier --output file: the table adds to them instead of measuring them again."""
    return [Run(**run) for run in json.loads(path.read_text())["runs"]]


def _run_one(
    method: str, paths: dict[str, Path], k: int, seed: int, args: argparse.Namespace, outcome: Outcome
) -> None:
    if method == SETFIT and not Path(args.setfit_python).exists():
        outcome.skipped.add(method)
        outcome.notes.append(f"setfit: skipped, no {args.setfit_python} (run bash scripts/setfit_env.sh)")
        return
    try:
        result = (
            run_setfit(paths, k, seed, args)
            if method == SETFIT
            else run_nlptransfer(method, paths, k, seed, args)
        )
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        # One failed run should not throw away an hour of other measurements.
        outcome.notes.append(f"{method} K={k} seed={seed}: failed, {str(err).splitlines()[0]}")
        print(err, file=sys.stderr, flush=True)
        return
    if isinstance(result, str):
        outcome.skipped.add(method)
        outcome.notes.append(result)
        print(result, file=sys.stderr, flush=True)
        return
    outcome.runs.append(result)
    print(f"{method} K={k} seed={seed}: accuracy {result.accuracy:.4f}, train {result.train_seconds:.1f}s",
          file=sys.stderr, flush=True)  # fmt: skip


def _save(outcome: Outcome, args: argparse.Namespace) -> None:
    """Every run so far, so an interrupted comparison keeps what it measured."""
    if args.output:
        payload = {
            "runs": [asdict(r) for r in outcome.runs],
            "notes": outcome.notes,
            "options": _options(args),
        }
        Path(args.output).write_text(json.dumps(payload, indent=2, default=str))


def _options(args: argparse.Namespace) -> dict:
    return {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}


# --------------------------------------------------------------------------- report


def markdown_table(runs: list[Run]) -> str:
    """One row per (method, K): mean +- std over seeds, each seed, gap to SetFit, mean train seconds."""
    groups: dict[tuple[str, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.method, run.k), []).append(run)
    lines = [
        "| method | K | accuracy (mean ± std) | per seed (seed: accuracy) | vs SetFit, same seeds (points) "
        "| train s (mean) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for (method, k), group in sorted(groups.items(), key=lambda item: (item[0][1], item[0][0] != SETFIT)):
        group = sorted(group, key=lambda r: r.seed)
        accuracies = [r.accuracy for r in group]
        mean, std = _mean(accuracies), statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        per_seed = " ".join(f"{r.seed}: {r.accuracy:.3f}" for r in group)
        gap = _gap_to_setfit(group, groups.get((SETFIT, k), [])) if method != SETFIT else ""
        seconds = _mean([r.train_seconds for r in group])
        lines.append(f"| {method} | {k} | {mean:.3f} ± {std:.3f} | {per_seed} | {gap} | {seconds:.1f} |")
    return "\n".join(lines)


def _gap_to_setfit(group: list[Run], setfit: list[Run]) -> str:
    """Mean paired difference over the seeds both ran: same examples, so seed noise cancels."""
    setfit_by_seed = {r.seed: r.accuracy for r in setfit}
    paired = [100 * (r.accuracy - setfit_by_seed[r.seed]) for r in group if r.seed in setfit_by_seed]
    return f"{_mean(paired):+.1f} (n={len(paired)})" if paired else ""


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k", type=int, nargs="+", default=[8, 16], help="Examples per label.")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="Sampling and training seeds."
    )
    parser.add_argument("--only", nargs="+", choices=[SETFIT, *METHODS], help="Run just these methods.")
    parser.add_argument("--validation", choices=list(VALIDATION_MODES), default="k",
                        help="nlptransfer's epoch-selection data: " + "; ".join(
                            f"{name}: {text}" for name, text in VALIDATION_MODES.items()))  # fmt: skip
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for every run.")
    parser.add_argument("--setfit_python", type=Path, default=REPO / ".venv-setfit" / "bin" / "python")
    parser.add_argument("--setfit_iterations", type=int, help="SetFit num_iterations (default: SetFit's).")
    parser.add_argument("--workdir", type=Path, help="Keep data and runs here (default: a temporary folder).")
    parser.add_argument("--output", help="Write every run as JSON here too.")
    parser.add_argument(
        "--reuse", type=Path, help="An earlier --output file: keep its runs, measure the rest."
    )
    parser.add_argument("--table_only", action="store_true", help="Print the --reuse runs; measure nothing.")
    parser.add_argument("--timeout", type=int, default=3600, help="Seconds one run may take.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="compare-setfit-") as scratch:
        outcome = run_all(args, args.workdir or Path(scratch))
    # Reused runs of other K, seeds or methods stay in --output but not in this table.
    shown = [r for r in outcome.runs if r.k in args.k and r.seed in args.seeds]
    shown = [r for r in shown if not args.only or r.method in args.only]
    print(markdown_table(shown) if shown else "No run finished.")
    print(
        f"\nnlptransfer validation (epoch selection): {VALIDATION_MODES[args.validation]}; SetFit uses none."
    )
    print(f"Test set: the built-in movie-review test split; threads per run: {args.threads}.")
    for note in outcome.notes:
        print(f"- {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
