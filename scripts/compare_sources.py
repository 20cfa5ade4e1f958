"""Train a frozen linear head on the movie-review corpus from each real source; print one table.

    python scripts/compare_sources.py                  # every source (about 20 min on 2 CPU cores)
    python scripts/compare_sources.py --only minilm-mean glove-bag
    python scripts/compare_sources.py --layer_sweep    # + each single MiniLM layer

Each row is one run of ``recipes/finetune.py`` (feature extraction: the body is
frozen and runs once per example); its results.json lands in
``runs/sources/<row>/``. Needs ``bash scripts/install_assets.sh --all``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# name -> (description, recipe flags)
SOURCES: dict[str, tuple[str, list[str]]] = {
    "minilm-mean": ("MiniLM, mean pooling, top layer", ["--model", "minilm", "--layers", "-1"]),
    "minilm-mix": ("MiniLM, learned scalar mix of all layers", ["--model", "minilm", "--layers", "all"]),
    "smollm2-last": ("SmolLM2-135M, last token, top layer",
                     ["--model", "smollm2", "--pooling", "last", "--layers", "-1"]),
    "smollm2-mean": ("SmolLM2-135M, mean pooling, top layer",
                     ["--model", "smollm2", "--pooling", "mean", "--layers", "-1"]),
    "glove-bag": ("GloVe 6B 50d, bag of embeddings (mean)", ["--model", "glove-6b-50d"]),
    "glove-bilstm": ("GloVe 6B 50d (frozen) + BiLSTM, max pooling",
                     ["--model", "glove-6b-50d", "--word_encoder", "bilstm", "--pooling", "max",
                      "--strategy", "finetune", "--unfreeze_layers", "1", "--body_lr_scale", "1",
                      "--learning_rate", "2e-3", "--epochs", "4"]),
    "glove-cnn": ("GloVe 6B 50d (frozen) + CNN (Kim 2014), max pooling",
                  ["--model", "glove-6b-50d", "--word_encoder", "cnn", "--pooling", "max",
                   "--strategy", "finetune", "--unfreeze_layers", "1", "--body_lr_scale", "1",
                   "--learning_rate", "2e-3", "--epochs", "4"]),
}  # fmt: skip


# Single MiniLM layers (0 = embeddings ... 6 = top), to check the learned mix against the best one.
LAYER_SWEEP = {
    f"minilm-layer-{i}": (f"MiniLM, mean pooling, layer {i} only", ["--model", "minilm", "--layers", str(i)])
    for i in range(7)
}


def run(name: str, flags: list[str], out_root: Path) -> dict:
    out = out_root / name
    command = [sys.executable, str(REPO / "recipes" / "finetune.py"), *flags, "--output_dir", str(out),
               "--overwrite_output_dir"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads((out / "results.json").read_text())


def majority_baseline() -> float:
    from nlptransfer import FinetuneConfig
    from nlptransfer.data import load_data

    data = load_data(FinetuneConfig())
    assert data.test is not None
    return Counter(data.test.labels).most_common(1)[0][1] / len(data.test)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=[*SOURCES, *LAYER_SWEEP], help="Run only these rows.")
    parser.add_argument("--layer_sweep", action="store_true", help="Also one row per single MiniLM layer.")
    parser.add_argument("--output_root", type=Path, default=Path("runs/sources"))
    args = parser.parse_args()
    print(f"majority-class baseline (test accuracy): {majority_baseline():.4f}\n")
    print(
        "| source | strategy | test accuracy | test macro-F1 | feature seconds | train seconds | trainable |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    rows = {**SOURCES, **LAYER_SWEEP}
    names = args.only or [*SOURCES, *(LAYER_SWEEP if args.layer_sweep else [])]
    for name in names:
        description, flags = rows[name]
        r = run(name, flags, args.output_root)
        test = r["test"]
        print(
            f"| {description} | {r['strategy']} | {test['accuracy']:.4f} | {test['f1_macro']:.4f} "
            f"| {r['feature_extraction_seconds']:.0f} | {r['train_seconds']:.0f} "
            f"| {r['trainable_parameters']:,} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
