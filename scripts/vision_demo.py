"""Few-shot image transfer, offline, in a few minutes on a laptop CPU.

No ImageNet weights can be downloaded here, so the demo makes its own source
model, as the classic "transfer on a laptop" demonstrations do:

1. pretrain a small ResNet (built from a transformers ``ResNetConfig``) on MNIST
   digits 0-4 and save its body as a plain Hugging Face model folder;
2. transfer it to digits 5-9 with 10, 20 and 30 labelled examples per class, by
   feature extraction (frozen body, new head) and by fine-tuning (all layers,
   body at 1/10 of the head's learning rate);
3. train the same architecture from random weights on the same few examples.

Every run goes through the library's ``train`` (the code behind
``recipes/finetune.py``); the equivalent command of each is printed with
``--show_commands``. Results: ``OUTPUT/summary.json``, ``OUTPUT/table.md`` and
``OUTPUT/accuracy.png``.

    python scripts/vision_demo.py                      # the whole demo
    python scripts/vision_demo.py --reuse_pretrained   # skip step 1 when its folder exists
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from transformers import ConvNextImageProcessorPil, ResNetConfig

from nlptransfer import FinetuneConfig, TransferModel
from nlptransfer.runs.finetune import train

METHODS = ("feature-extraction", "finetune", "lp-ft", "from-scratch")
IMAGE_SIZE = 32


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_dir", default="runs/vision-demo")
    parser.add_argument("--shots", type=int, nargs="+", default=[10, 20, 30], help="Examples per class.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--pretrain_epochs", type=int, default=25)
    parser.add_argument("--epochs", type=int, default=40, help="Epochs of every transfer / scratch run.")
    parser.add_argument("--reuse_pretrained", action="store_true", help="Reuse OUTPUT/resnet-mnist-0-4.")
    parser.add_argument("--show_commands", action="store_true", help="Print each run's CLI command.")
    # A small ResNet (3 stages of one basic block, 32-128 channels): on 1,400 source images
    # it transferred better than ResNet-18's layout (64-512 channels, 2 blocks per stage).
    parser.add_argument("--hidden_sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 1, 1])
    return parser.parse_args()


def architecture(folder: Path, args: argparse.Namespace) -> str:
    """A model folder with a config and an image processor but no weights: an architecture."""
    folder.mkdir(parents=True, exist_ok=True)
    config = ResNetConfig(
        num_channels=3, embedding_size=args.hidden_sizes[0], hidden_sizes=args.hidden_sizes,
        depths=args.depths, layer_type="basic",
    )  # fmt: skip
    config.save_pretrained(folder)
    processor = ConvNextImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_pct=1.0, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    processor.save_pretrained(folder)
    return str(folder)


def run(options: dict[str, Any], show: bool) -> dict[str, Any]:
    quiet = {"report_to": ["none"], "save_steps": 0, "save_every_epoch": False, "overwrite_output_dir": True}
    config = FinetuneConfig(**options, **quiet)
    if show:
        flags = " ".join(
            f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in options.items()
        )
        print(f"  accelerate launch recipes/finetune.py {flags.replace(' True', '')}")
    start = time.perf_counter()
    results = train(config)
    results["wall_seconds"] = time.perf_counter() - start
    return results


def pretrain(out: Path, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """Supervised pretraining on digits 0-4; the body is exported as a plain HF folder."""
    body = out / "resnet-mnist-0-4"
    if args.reuse_pretrained and (body / "config.json").is_file():
        info = json.loads((out / "pretrain.json").read_text())
        print(f"reusing the pretrained body in {body} (test accuracy on 0-4: {info['test_accuracy']:.4f})")
        return str(body), info
    options = {
        "model": architecture(out / "resnet-architecture", args), "from_scratch": True,
        "dataset": "mnist-digits-0-4",
        "strategy": "finetune", "learning_rate": 2e-3, "body_lr_scale": 1.0, "epochs": args.pretrain_epochs,
        "batch_size": 32, "augment": ["affine"], "seed": 0, "output_dir": str(out / "pretrain-0-4"),
    }  # fmt: skip
    print(f"pretraining on digits 0-4 ({args.pretrain_epochs} epochs) ...")
    results = run(options, args.show_commands)
    TransferModel.from_pretrained(out / "pretrain-0-4").backbone.export_pretrained(body)
    info = {
        "test_accuracy": results["test"]["accuracy"],
        "seconds": results["wall_seconds"],
        "options": options,
    }
    (out / "pretrain.json").write_text(json.dumps(info, indent=2))
    print(
        f"  digits 0-4 test accuracy {info['test_accuracy']:.4f} in {info['seconds']:.0f} s; body in {body}"
    )
    return str(body), info


def transfer_options(
    method: str, body: str, scratch: str, shots: int, seed: int, epochs: int
) -> dict[str, Any]:
    common = {"dataset": "mnist-digits-5-9", "samples_per_label": shots, "seed": seed, "epochs": epochs,
              "batch_size": 16}  # fmt: skip
    if method == "feature-extraction":
        return {**common, "model": body, "strategy": "feature-extraction", "learning_rate": 3e-3}
    if method in ("finetune", "lp-ft"):
        return {**common, "model": body, "strategy": method, "learning_rate": 3e-3, "body_lr_scale": 0.1}
    return {**common, "model": scratch, "from_scratch": True, "strategy": "finetune", "learning_rate": 3e-3,
            "body_lr_scale": 1.0}  # fmt: skip


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for row in rows:
        cell = table.setdefault(row["method"], {}).setdefault(
            str(row["shots"]), {"accuracy": [], "seconds": []}
        )
        cell["accuracy"].append(row["accuracy"])
        cell["seconds"].append(row["seconds"])
    for cells in table.values():
        for cell in cells.values():
            cell["mean"] = statistics.mean(cell["accuracy"])
            cell["std"] = statistics.pstdev(cell["accuracy"])
            cell["mean_seconds"] = statistics.mean(cell["seconds"])
    return table


def markdown(table: dict[str, Any], shots: list[int]) -> str:
    header = "| method | " + " | ".join(f"{k} per class" for k in shots) + " | time per run |"
    lines = [header, "|---|" + "---|" * (len(shots) + 1)]
    for method, cells in table.items():
        accs = [f"{cells[str(k)]['mean']:.3f} ± {cells[str(k)]['std']:.3f}" for k in shots]
        secs = statistics.mean(cells[str(k)]["mean_seconds"] for k in shots)
        lines.append(f"| {method} | " + " | ".join(accs) + f" | {secs:.1f} s |")
    return "\n".join(lines)


def plot(table: dict[str, Any], shots: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for method, cells in table.items():
        means = [cells[str(k)]["mean"] for k in shots]
        stds = [cells[str(k)]["std"] for k in shots]
        ax.errorbar(shots, means, yerr=stds, marker="o", capsize=3, label=method)
    ax.set_xlabel("labelled examples per class (digits 5-9)")
    ax.set_ylabel("test accuracy (1,000 images)")
    ax.set_xticks(shots)
    ax.set_title("ResNet pretrained on digits 0-4, transferred to 5-9")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    body, pretrained = pretrain(out, args)
    scratch = architecture(out / "resnet-architecture", args)
    rows = []
    for shots in args.shots:
        for seed in args.seeds:
            for method in args.methods:
                options = transfer_options(method, body, scratch, shots, seed, args.epochs)
                options["output_dir"] = str(out / "runs" / f"{method}-k{shots}-seed{seed}")
                results = run(options, args.show_commands)
                accuracy = results["test"]["accuracy"]
                row = {"method": method, "shots": shots, "seed": seed, "accuracy": accuracy,
                       "seconds": results["wall_seconds"], "best_epoch": results["best_epoch"]}  # fmt: skip
                rows.append(row)
                print(f"  k={shots:>2} seed={seed} {method:<18} test accuracy {row['accuracy']:.4f} "
                      f"({row['seconds']:.1f} s)")  # fmt: skip
    table = summarise(rows)
    total = time.perf_counter() - start
    summary = {
        "pretrain": pretrained,
        "runs": rows,
        "table": table,
        "total_seconds": total,
        "args": vars(args),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    text = markdown(table, args.shots)
    (out / "table.md").write_text(text + "\n")
    plot(table, args.shots, out / "accuracy.png")
    print(f"\n{text}\n\nwhole demo: {total:.0f} s; summary.json, table.md and accuracy.png in {out}")


if __name__ == "__main__":
    main()
