"""Section 3: few-shot accuracy and training time against SetFit on the same examples.

For each K (examples per label) and seed, ``scripts/compare_setfit.py`` draws K training
examples per label with nlptransfer's own sampling and gives the same CSV files to SetFit
(in ``.venv-setfit``) and to ``recipes/finetune.py`` for each nlptransfer strategy. A
strategy meets the target at a K when its mean test accuracy over the seeds is within 0.5
point of SetFit's and SetFit's median training time is at least 3x its own.

Training time: SetFit's is ``trainer.train()`` (pairs, body, head), without encoding the
test set. nlptransfer's is its ``train_seconds`` less the features of the test split,
which frozen-body strategies extract with the training splits (the evaluation cost, as
SetFit's ``predict`` is).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

from common import PEER_PYTHON, REPO, Result

sys.path.insert(0, str(REPO / "scripts"))

import compare_setfit  # scripts/compare_setfit.py, one folder up

TIME_TARGET = 3.0
POINTS = 0.5  # accuracy within this many points of SetFit's
METHODS = ["feature-extraction-logreg", "contrastive", "contrastive-top2", "auto"]


def _arguments(options: Any) -> Any:
    output = Path(options.output).with_name("fewshot-runs.json")
    reuse = output if options.fewshot_resume and output.is_file() else None
    argv = ["--k", *map(str, options.fewshot_k), "--seeds", *map(str, options.fewshot_seeds)]
    argv += ["--only", compare_setfit.SETFIT, *options.fewshot_methods, "--output", str(output)]
    argv += ["--setfit_python", str(PEER_PYTHON), "--workdir", str(output.with_name("fewshot"))]
    if reuse:
        argv += ["--reuse", str(reuse)]
    return compare_setfit.parse_args(argv)


def train_seconds(run: compare_setfit.Run) -> float:
    test_features = (run.details.get("feature_extraction_seconds_by_split") or {}).get("test", 0.0)
    return run.train_seconds - test_features


def _summary(runs: list[compare_setfit.Run]) -> dict[str, float]:
    return {
        "accuracy": statistics.mean(r.accuracy for r in runs),
        "accuracy_std": statistics.stdev(r.accuracy for r in runs) if len(runs) > 1 else 0.0,
        "train_seconds": statistics.median(train_seconds(r) for r in runs),
        "seeds": len(runs),
    }


def _row(k: int, setfit: dict[str, float], methods: dict[str, dict[str, float]]) -> Result:
    """The best strategy at this K: the fastest one within POINTS of SetFit, else the most accurate one."""
    for summary in methods.values():
        summary["points_vs_setfit"] = 100 * (summary["accuracy"] - setfit["accuracy"])
        summary["time_ratio"] = setfit["train_seconds"] / summary["train_seconds"]
    close = {n: s for n, s in methods.items() if s["points_vs_setfit"] >= -POINTS}
    pool = close or methods
    best = max(pool, key=lambda n: pool[n]["time_ratio"] if close else pool[n]["accuracy"])
    chosen = methods[best]
    return Result(
        section=f"few-shot K={k}",
        what=f"{k} examples per label, mean over {chosen['seeds']} seeds, best strategy: {best}",
        ours=f"{best}: accuracy {chosen['accuracy']:.3f} ± {chosen['accuracy_std']:.3f} "
        f"({chosen['points_vs_setfit']:+.1f} points), train {chosen['train_seconds']:.1f} s",
        peer=f"SetFit: accuracy {setfit['accuracy']:.3f} ± {setfit['accuracy_std']:.3f}, "
        f"train {setfit['train_seconds']:.1f} s",
        ratio=chosen["time_ratio"],
        target=TIME_TARGET,
        details={"setfit": setfit, "methods": methods},
        condition=chosen["points_vs_setfit"] >= -POINTS,
    )


def run(options: Any) -> list[Result]:
    if not PEER_PYTHON.is_file():
        raise SystemExit(f"The few-shot section runs SetFit in {PEER_PYTHON.parent.parent}, which does not "
                         "exist yet. Create it with: bash scripts/setfit_env.sh")  # fmt: skip
    args = _arguments(options)
    outcome = compare_setfit.run_all(args, args.workdir)
    if outcome.notes:
        print("\n".join(f"- {note}" for note in outcome.notes), file=sys.stderr)
    print(compare_setfit.markdown_table(outcome.runs), flush=True)
    rows = []
    for k in args.k:
        by_method: dict[str, list[compare_setfit.Run]] = {}
        for r in outcome.runs:
            if r.k == k and r.seed in args.seeds:
                by_method.setdefault(r.method, []).append(r)
        setfit = by_method.pop(compare_setfit.SETFIT, None)
        methods = {name: _summary(runs) for name, runs in by_method.items() if name in args.only}
        if setfit and methods:
            rows.append(_row(k, _summary(setfit), methods))
    return rows
