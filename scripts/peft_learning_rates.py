"""The learning-rate check of docs/strategies.md: PEFT strategies on MiniLM, a small and short run.

    python scripts/peft_learning_rates.py

Each row is one run of ``recipes/finetune.py`` in its own process on the built-in movie reviews:
the first 1,000 training examples (``--max_train_examples 1000``), 2 epochs, ``--max_length 64``,
everything else at the strategy's defaults. It prints the table docs/strategies.md shows (the
validation accuracy of the best epoch, and the test accuracy), then each run's machine and
commit. A sanity check of the default learning rates on one seed, not a benchmark. The runs are
in ``runs/peft-lr/<row>/``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from summarize_runs import provenance  # noqa: E402

COMMON = ["--max_train_examples", "1000", "--epochs", "2", "--max_length", "64"]
# name -> (strategy, learning rate or None for the strategy's default)
ROWS: dict[str, tuple[str, float | None]] = {
    "lora-5e-4": ("lora", 5e-4),
    "lora-default": ("lora", None),
    "lora-2e-3": ("lora", 2e-3),
    "ia3-default": ("ia3", None),
    "prefix-tuning-default": ("prefix-tuning", None),
    "prompt-tuning-default": ("prompt-tuning", None),
}


def run(name: str, strategy: str, lr: float | None, root: Path) -> dict:
    out = root / name
    command = [sys.executable, str(REPO / "recipes" / "finetune.py"), "--strategy", strategy, *COMMON,
               "--output_dir", str(out), "--overwrite_output_dir"]  # fmt: skip
    if lr is not None:
        command += ["--learning_rate", f"{lr:g}"]
    print(f"{name}: running", file=sys.stderr, flush=True)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads((out / "results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_root", type=Path, default=Path("runs/peft-lr"))
    parser.add_argument("--only", nargs="+", choices=list(ROWS), help="Run only these rows.")
    args = parser.parse_args()
    names = args.only or list(ROWS)
    print("| strategy | learning rate | validation accuracy | test accuracy |")
    print("|---|---|---:|---:|")
    runs = []
    for name in names:
        strategy, lr = ROWS[name]
        results = run(name, strategy, lr, args.output_root)
        runs.append((args.output_root / name, results))
        used = results["phases"][-1]["learning_rate"]
        label = f"{used:g}" if lr is not None else f"{used:g} (default)"
        print(
            f"| `{strategy}` | {label} | {results['validation']['accuracy']:.4f} "
            f"| {results['test']['accuracy']:.4f} |",
            flush=True,
        )
    print("\nMachine, commit and software of these runs (from their results.json):")
    print("\n".join(provenance(runs)))


if __name__ == "__main__":
    main()
