"""Domain-adaptive pretraining, measured: does continuing MiniLM's pretraining help downstream?

    python scripts/compare_pretraining.py                 # about 25 min on 2 CPU cores
    python scripts/compare_pretraining.py --seeds 1 2 3   # fine-tuning seeds to average over
    python scripts/compare_pretraining.py --reuse_pretrained --seeds 43   # more seeds, same adapted model

1. ``recipes/pretrain.py``: masked-LM on the movie-review corpus's *training* texts
   (validation and test texts are never seen), held-out MLM loss before and after.
2. ``recipes/finetune.py --strategy finetune`` from the original MiniLM and from
   the adapted folder, same split, same options, for each seed.

Results land in ``runs/dapt/`` and the table is printed as markdown (it is the
one in docs/pretraining.md). Needs ``bash scripts/install_assets.sh --all``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(recipe: str, flags: list[str], out: Path, threads: int | None) -> dict:
    command = [sys.executable, str(REPO / "recipes" / recipe), *flags, "--output_dir", str(out),
               "--overwrite_output_dir", "--save_steps", "0", "--no-save_every_epoch"]  # fmt: skip
    if threads:
        command += ["--num_threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{recipe} {' '.join(flags)} failed:\n{done.stderr[-3000:]}")
    return json.loads((out / "results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/dapt")
    parser.add_argument("--pretrain_epochs", type=int, default=2)
    parser.add_argument("--pretrain_lr", type=float, default=1e-4)
    parser.add_argument("--finetune_epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--num_threads", type=int, default=None, help="CPU threads per run (default: all).")
    parser.add_argument(
        "--reuse_pretrained", action="store_true", help="Fine-tune from an adapted model already in --out."
    )
    args = parser.parse_args()
    out = Path(args.out)
    adapted = out / "minilm-adapted"
    flags = [
        "--model",
        "minilm",
        "--epochs",
        str(args.pretrain_epochs),
        "--learning_rate",
        str(args.pretrain_lr),
    ]
    if args.reuse_pretrained and (adapted / "results.json").is_file():
        pre = json.loads((adapted / "results.json").read_text())
    else:
        pre = run("pretrain.py", flags, adapted, args.num_threads)
    print(table(pre, {}, args).splitlines()[0], flush=True)
    rows: dict[str, list[dict]] = {"MiniLM (original)": [], "MiniLM adapted (DAPT)": []}
    for seed in args.seeds:
        for label, model in (("MiniLM (original)", "minilm"), ("MiniLM adapted (DAPT)", str(adapted))):
            flags = ["--model", model, "--strategy", "finetune", "--epochs", str(args.finetune_epochs),
                     "--seed", str(seed)]  # fmt: skip
            name = "original" if model == "minilm" else "adapted"
            result = run("finetune.py", flags, out / f"finetune-{name}-seed{seed}", args.num_threads)
            rows[label].append(result)
            print(f"{label}, seed {seed}: test accuracy {result['test']['accuracy']:.4f}", flush=True)
    # The table covers every seed run so far in --out, from this call or earlier ones.
    for label, name in (("MiniLM (original)", "original"), ("MiniLM adapted (DAPT)", "adapted")):
        found = sorted(
            out.glob(f"finetune-{name}-seed*/results.json"),
            key=lambda p: int(p.parent.name[len(f"finetune-{name}-seed") :]),
        )
        rows[label] = [json.loads(f.read_text()) for f in found]
    print(table(pre, rows, args))
    summary = out / f"summary-seeds-{'-'.join(map(str, args.seeds))}.json"
    summary.write_text(json.dumps({"pretrain": pre, "finetune": rows}, indent=1, default=str))


def table(pre: dict, rows: dict[str, list[dict]], args: argparse.Namespace) -> str:
    lines = [
        f"Pretraining ({args.pretrain_epochs} epochs, lr {args.pretrain_lr:g}, {pre['num_train_texts']} "
        f"texts, {pre['num_heldout_texts']} held out): held-out MLM loss {pre['heldout_loss_before']:.4f} -> "
        f"{pre['heldout_loss_after']:.4f}, perplexity {pre['heldout_perplexity_before']:.1f} -> "
        f"{pre['heldout_perplexity_after']:.1f}, {pre['train_seconds']:.0f} s.",
        "",
        "| body | seeds | test accuracy (mean) | test accuracy per seed | test macro-F1 (mean) "
        "| validation accuracy per seed |",
        "|---|---|---|---|---|---|",
    ]
    for label, results in rows.items():
        acc = [r["test"]["accuracy"] for r in results]
        f1 = [r["test"]["f1_macro"] for r in results]
        val = [r["validation"]["accuracy"] for r in results]
        seeds = ", ".join(str(r["seed"]) for r in results)
        per_seed, per_seed_val = (", ".join(f"{v:.4f}" for v in values) for values in (acc, val))
        lines.append(f"| {label} | {seeds} | **{statistics.mean(acc):.4f}** | {per_seed} "
                     f"| {statistics.mean(f1):.4f} | {per_seed_val} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
