"""``nlptransfer export RUN_DIR OUTPUT_DIR --format onnx [--quantize int8|fp16]``."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from nlptransfer.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nlptransfer export",
        description="Export a trained run as one ONNX graph (body, pooling, head, calibration), with its "
        "tokenizer and config, for `nlptransfer predict --model OUTPUT_DIR` or OnnxModel without torch.",
    )
    parser.add_argument("run_dir", help="Output folder of a training run (or a saved model).")
    parser.add_argument("output_dir", help="Where to write the export (a new or empty folder).")
    parser.add_argument("--format", default="onnx", choices=["onnx"], help="Export format (onnx).")
    parser.add_argument(
        "--quantize",
        default=None,
        choices=["int8", "int8-weights", "fp16"],
        help="int8: dynamic quantisation (int8 weights and activations; the fastest on CPUs); "
        "int8-weights: int8 weight blocks (closest to float32, answers independent of the batch, "
        "float32's speed); fp16: half precision (for GPU runtimes). Default: float32.",
    )
    parser.add_argument(
        "--check_file",
        default=None,
        help="A table of your own texts (CSV/JSON/parquet, e.g. a test set) to compare the export with "
        "the torch model on before it is published: the share of equal answers, and both accuracies "
        "when it has labels. Quantising costs a little accuracy; this shows how much on your data.",
    )
    parser.add_argument("--text_column", default="text", help="--check_file: the column of texts.")
    parser.add_argument(
        "--label_column", default="label", help="--check_file: the column of true labels, if it has one."
    )
    parser.add_argument("--overwrite_output_dir", action="store_true", help="Replace an export saved there.")
    parser.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="Export a model trained with --trust_remote_code (runs the code in its folder).",
    )
    return parser


def run_export_command(argv: Sequence[str], setup_logging: Callable[[], None] = lambda: None) -> int:
    """The command; ``setup_logging`` (the CLI's) runs once the options parse."""
    args = _parser().parse_args(argv)
    source, target = Path(args.run_dir), Path(args.output_dir)
    if target.resolve() == source.resolve():
        raise ConfigError("OUTPUT_DIR must differ from RUN_DIR: the run keeps its torch model.")
    _check_target(target, args.overwrite_output_dir)
    from nlptransfer.export.onnx import export_onnx

    texts, labels = _check_texts(args)
    setup_logging()
    result = export_onnx(source, target, args.quantize, args.trust_remote_code, texts, labels)
    size = sum(f.stat().st_size for f in target.iterdir() if f.is_file()) / 2**20
    print(
        f"exported {source} to {target} ({result.precision}, {size:.0f} MB) in {result.seconds:.1f} s; "
        f"largest score difference from the torch model on the probe texts: {result.max_abs_diff:.2e}. "
        f"Predict with: nlptransfer predict --model {target} --text '...'"
    )
    if result.check is not None:
        print(f"on {args.check_file}: {_describe_check(result.check, result.precision)}")
    return 0


def _check_texts(args: argparse.Namespace) -> tuple[list[str] | None, list[str] | None]:
    """The texts (and labels, when the table has them) of --check_file."""
    if not args.check_file:
        return None, None
    from nlptransfer.data import read_table
    from nlptransfer.errors import DataError

    frame = next(iter(read_table(args.check_file, text_columns=[args.text_column]).values()))
    if args.text_column not in frame.columns:
        raise DataError(
            f"{args.check_file} has no column '{args.text_column}'. Columns that exist: "
            f"{', '.join(map(str, frame.columns))}. Pass --text_column."
        )
    texts = frame[args.text_column].fillna("").astype(str).tolist()
    labels = frame[args.label_column].astype(str).tolist() if args.label_column in frame.columns else None
    return texts, labels


def _describe_check(check: dict, precision: str) -> str:
    texts = f"{check['texts']} texts"
    if "largest_difference" in check:
        return f"{texts}, largest difference from the torch model {check['largest_difference']:.3g}"
    line = f"{texts}, the {precision} export answers as the torch model on {check['agreement']:.1%}"
    if "accuracy_torch" in check:
        torch_accuracy, export_accuracy = check["accuracy_torch"], check["accuracy_export"]
        line += f"; accuracy {torch_accuracy:.4f} (torch) -> {export_accuracy:.4f} ({precision})"
    return line


def _check_target(target: Path, overwrite: bool) -> None:
    from nlptransfer.export.runtime import is_export

    if target.is_file():
        raise ConfigError(f"OUTPUT_DIR '{target}' is a file; pass a folder path.")
    if not target.is_dir() or not any(target.iterdir()):
        return
    if not is_export(target):
        raise ConfigError(
            f"OUTPUT_DIR '{target}' holds files that are not an ONNX export; choose a new or empty folder."
        )
    if not overwrite:
        raise ConfigError(
            f"'{target}' holds an ONNX export already; pass --overwrite_output_dir to replace it."
        )
