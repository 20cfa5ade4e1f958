"""nlptransfer against what users would pick instead, on this machine, in one run.

    bash scripts/setfit_env.sh                        # once: the peers, in .venv-setfit
    HF_HUB_OFFLINE=1 python scripts/bench/run.py      # every section; table in docs/benchmarks.md
    HF_HUB_OFFLINE=1 python scripts/bench/run.py --sections vectors cache --repeats 5

Ratios are the claim (ours over the peer's time or rate; above 1 is better), not absolute
times: each timed part repeats ``--repeats`` times and the median counts.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cache
import endtoend
import extraction
import fewshot
import finetune
import inference
import partial
import vectors
from common import Result

SECTIONS = {
    "extraction": extraction.run,
    "finetune": finetune.run,
    "fewshot": fewshot.run,
    "cache": cache.run,
    "vectors": vectors.run,
    "endtoend": endtoend.run,
    "partial": partial.run,
    "inference": inference.run,
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num_texts", type=int, default=4000, help="extraction: texts encoded per repeat")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--ft_epochs", type=int, default=1, help="finetune: epochs of each run")
    parser.add_argument("--partial_layers", type=int, default=2, help="partial: top layers trained")
    parser.add_argument("--partial_epochs", type=int, default=3, help="partial: epochs of each run")
    parser.add_argument(
        "--partial_examples", type=int, default=1000, help="partial: training examples (0: all)"
    )
    parser.add_argument(
        "--ft_examples", type=int, default=2000, help="finetune: training samples of the speed runs (0: all)"
    )
    parser.add_argument(
        "--ft_accuracy_examples",
        type=int,
        default=None,
        help="finetune: training samples of the accuracy and memory run (default: all)",
    )
    parser.add_argument(
        "--ft_device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="finetune: where to train (auto: a GPU if there is one)",
    )
    parser.add_argument(
        "--mixed_precision",
        choices=["no", "bf16", "fp16"],
        default="no",
        help="finetune: mixed precision of every tool (bf16 on a GPU)",
    )
    parser.add_argument("--fewshot_k", type=int, nargs="+", default=[8, 16, 64], help="fewshot: K per label")
    parser.add_argument("--fewshot_seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--fewshot_methods",
        nargs="+",
        default=fewshot.METHODS,
        choices=list(fewshot.compare_setfit.METHODS),
        help="fewshot: nlptransfer strategies",
    )
    parser.add_argument(
        "--fewshot_resume",
        action="store_true",
        help="fewshot: keep the runs of an earlier fewshot-runs.json, measure the rest",
    )
    parser.add_argument("--cache_args", nargs="*", default=[], help="cache: extra recipes/finetune.py flags")
    parser.add_argument("--endtoend_threads", type=int, default=2, help="endtoend: CPU threads of both tools")
    parser.add_argument(
        "--endtoend_only", nargs="*", default=[], help="endtoend: only rows whose name contains one of these"
    )
    parser.add_argument(
        "--inference_train_examples", type=int, default=0, help="inference: training examples (0: all)"
    )
    parser.add_argument("--output", default="runs/bench/results.json")
    return parser.parse_args()


def table(results: list[Result]) -> str:
    lines = [
        "| section | what | nlptransfer | peer | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r.section} | {r.what} | {r.ours} | {r.peer} | **{r.ratio:.2f}x** | "
                     f">= {r.target:g}x | {'yes' if r.met else 'no'} |")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    results = []
    for name in args.sections:
        print(f"running {name} ...", flush=True)
        rows = SECTIONS[name](args)
        rows = rows if isinstance(rows, list) else [rows]
        results += rows
        print(table(rows), flush=True)
    from nlptransfer.runs.outputs import versions

    record = {"machine": platform.platform(), "versions": versions(), "args": vars(args),
              "results": [{**asdict(r), "met": r.met} for r in results]}  # fmt: skip
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(record, indent=2))
    print("\n" + table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
