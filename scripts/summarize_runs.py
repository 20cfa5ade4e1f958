"""Print a Markdown table of finished runs from their results.json files.

python scripts/summarize_runs.py runs/*
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def row(folder: Path) -> str:
    results = json.loads((folder / "results.json").read_text())
    test = results.get("test") or {}
    config = results["config"]
    scope = "all layers" if config.get("unfreeze_layers") is None else f"top {config['unfreeze_layers']}"
    what = results["strategy"] if results["strategy"] != "finetune" else f"finetune ({scope})"
    return (
        f"| {what} | {results['model']} | {results['num_train_examples']:,} | {results['epochs_run']} | "
        f"{test.get('accuracy', float('nan')):.4f} | {test.get('f1_macro', float('nan')):.4f} | "
        f"{results['validation'].get('accuracy', float('nan')):.4f} | {results['train_seconds']:.0f} | "
        f"{results['trainable_parameters']:,} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="Run output folders.")
    args = parser.parse_args()
    print(
        "| strategy | model | train examples | epochs | test accuracy | test macro-F1 "
        "| validation accuracy | train seconds | trainable parameters |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for folder in args.runs:
        if (folder / "results.json").is_file():
            print(row(folder))


if __name__ == "__main__":
    main()
