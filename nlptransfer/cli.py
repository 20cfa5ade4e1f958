"""The ``nlptransfer`` command: train, inspect trainable layers, predict."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from nlptransfer.config import FinetuneConfig, parse_config
from nlptransfer.errors import DataError, NLPTransferError, TrainingInterrupted
from nlptransfer.registry import closest_hint

USAGE = """usage: nlptransfer COMMAND [options]

commands:
  train    train a classifier (same as `accelerate launch recipes/finetune.py`)
  pretrain continue pretraining on unlabelled text (same as `accelerate launch recipes/pretrain.py`)
  advise   measure your data, domain gap and compute; recommend a strategy and print its command
  compare  run strategies x label budgets x seeds on your data; write a report with plots
  tune     search the strategy's hyperparameters with Optuna (trials, pruning, resumable)
  layers   show which layers a strategy trains, without training
  predict  predict labels with a saved model, or with an ONNX export (no torch needed)
  export   export a trained run as one ONNX graph (fp32, int8 or fp16), tokenizer included
  embed    write the embeddings of a file of texts (.npy or parquet) for downstream models
  merge-adapter  fold a LoRA / IA3 / LoHa adapter into the body: a plain model (RUN_DIR OUTPUT_DIR)
  train-vectors  train word2vec / fastText on your unlabelled text (for --model word2vec:PATH)

`nlptransfer COMMAND --help` lists each command's options."""


def setup_logging() -> None:
    """INFO logs from the main process only; library users keep their own logging setup."""
    import transformers

    is_main = os.environ.get("RANK", "0") == "0"
    level = logging.INFO if is_main else logging.ERROR
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level, force=True)
    for noisy in (
        "httpx",
        "huggingface_hub",
        "filelock",
        "accelerate.checkpointing",
        "accelerate.accelerator",
        "accelerate.utils.other",  # "Removed shared tensor ... while saving": expected for tied weights
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not is_main:
        transformers.logging.set_verbosity_error()


def _train(argv: Sequence[str]) -> int:
    # The options parse (and --help prints) before torch and transformers load.
    config = parse_config(FinetuneConfig, argv, description="Train a text classifier by transfer learning.")
    from accelerate import PartialState

    from nlptransfer.runs.finetune import train

    setup_logging()
    results = train(config)
    if PartialState().is_main_process:
        summary = {k: results[k] for k in ("strategy", "model", "test", "validation", "train_seconds")}
        print(json.dumps(summary, indent=2))
    return 0


def _pretrain(argv: Sequence[str]) -> int:
    from accelerate import PartialState

    from nlptransfer.runs.pretrain import PretrainConfig, pretrain

    config = parse_config(
        PretrainConfig, argv, description="Continue pretraining a model on unlabelled in-domain text."
    )
    setup_logging()
    results = pretrain(config)
    if PartialState().is_main_process:
        print(json.dumps({k: v for k, v in results.items() if k not in ("config", "versions")}, indent=2))
    return 0


def _advise(argv: Sequence[str]) -> int:
    from nlptransfer.advisor.advise import AdviseConfig, advise, render

    config = parse_config(
        AdviseConfig, argv, description="Measure your data, its familiarity to the model and the compute "
        "each strategy needs; recommend a strategy and print the command that runs it (same flags as train).",
    )  # fmt: skip
    setup_logging()
    measured, advice = advise(config)
    print(render(measured, advice, config))
    return 0


def _compare(argv: Sequence[str]) -> int:
    from nlptransfer.comparison import CompareConfig, run_comparison

    return _run_to_report(
        CompareConfig, run_comparison, argv, "Run several strategies x label budgets x seeds on your data "
        "and write a report (Markdown + plots). Rerun the same command to resume an interrupted sweep.",
    )  # fmt: skip


def _tune(argv: Sequence[str]) -> int:
    from nlptransfer.tuning import TuneConfig, run_tune

    return _run_to_report(
        TuneConfig, run_tune, argv, "Search the hyperparameters the strategy exposes (Optuna: pruning, a "
        "trial or time budget); rerun the same command to continue the study. Same flags as train.",
    )  # fmt: skip


def _run_to_report(
    config_class: type, run: Callable[[Any], Any], argv: Sequence[str], description: str
) -> int:
    """A command that parses its options, runs, and prints where its report is."""
    config = parse_config(config_class, argv, description=description)
    setup_logging()
    print(f"report: {run(config)}")
    return 0


def _layers(argv: Sequence[str]) -> int:
    config = parse_config(
        FinetuneConfig,
        argv,
        description="Print which layers a run with these options would train (same flags as train).",
    )
    from nlptransfer.errors import ConfigError
    from nlptransfer.runs.finetune import plan_run
    from nlptransfer.strategies import get_strategy

    if config.strategy == "auto":
        raise ConfigError(
            "--strategy auto chooses the strategy from the data when train runs (it prints and saves "
            "the choice and its trainable layers); pass --strategy NAME to see one strategy's layers."
        )
    print(plan_run(config, get_strategy(config.strategy), ["label_0", "label_1"]).table)
    return 0


def _add_trust_remote_code(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="Load a model trained with --trust_remote_code (runs the code in its folder).",
    )


def _predict_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nlptransfer predict",
        description="Predict with a saved model, or with an ONNX export (`nlptransfer export`), which "
        "runs on onnxruntime without importing torch.",
    )
    parser.add_argument("--model", required=True, help="Output folder of a training run, or of an export.")
    parser.add_argument("--text", action="append", help="A text to classify (repeatable).")
    parser.add_argument("--input_file", help="CSV/JSON/parquet file of texts.")
    parser.add_argument("--text_column", default="text")
    parser.add_argument("--text_pair_column", default=None)
    parser.add_argument("--output_file", help="Write predictions here (CSV) instead of printing them.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument(
        "--abstain_threshold",
        type=float,
        default=None,
        help="Answer 'unsure' when the predicted class's (calibrated) probability is below this "
        "(single-label classification).",
    )
    _add_trust_remote_code(parser)
    return parser


def _predict(argv: Sequence[str]) -> int:
    args = _predict_parser().parse_args(argv)
    if args.batch_size < 1:
        raise DataError(f"--batch_size must be at least 1, got {args.batch_size}.")
    if bool(args.text) == bool(args.input_file):
        raise DataError(
            "Give texts with --text (repeatable) or a file with --input_file, not both or neither."
        )
    from nlptransfer.export.runtime import OnnxModel, is_export
    from nlptransfer.tasks.answers import check_abstain_threshold

    if args.abstain_threshold is not None:
        check_abstain_threshold(args.abstain_threshold)
    if is_export(args.model):  # onnxruntime, tokenizers and numpy: torch is never imported
        model: Any = OnnxModel.from_pretrained(args.model)
    else:
        from nlptransfer.model.transfer import TransferModel

        model = TransferModel.from_pretrained(args.model, args.trust_remote_code)
    frame, texts, pairs = _predict_inputs(args)
    predictions = model.predict(
        texts, pairs, batch_size=args.batch_size, abstain_threshold=args.abstain_threshold
    )
    columns = predictions.columns()
    if args.output_file:
        frame = frame.assign(**columns)
        frame.to_csv(args.output_file, index=False)
        print(f"wrote {len(frame)} predictions to {args.output_file}")
    else:
        # The answer (and the predicted class's score), then the text; probabilities go to files only.
        shown = [values for name, values in columns.items() if not name.startswith("prob_")]
        for i, text in enumerate(texts):
            print("\t".join([*(_cell(values[i]) for values in shown), text]))
    return 0


def _predict_inputs(args: argparse.Namespace) -> tuple[Any, list[str], list[str] | None]:
    """(the table written back with predictions, the texts, their pairs or None)."""
    import pandas as pd

    from nlptransfer.data import read_table

    if not args.input_file:
        return pd.DataFrame({args.text_column: args.text}), args.text, None
    text_columns = [c for c in (args.text_column, args.text_pair_column) if c]
    # Every column is kept for the output file; the texts are read as written, as in training.
    frame = next(iter(read_table(args.input_file, text_columns=text_columns).values()))
    for column in text_columns:
        if column not in frame.columns:
            raise DataError(
                f"{args.input_file} has no column '{column}'. Columns that exist: "
                f"{', '.join(map(str, frame.columns))}. Pass --text_column."
            )
    missing = int(frame[args.text_column].isna().sum())
    if missing:
        print(f"warning: {missing} rows have no text; they are predicted as empty texts", file=sys.stderr)
    texts = frame[args.text_column].fillna("").astype(str).tolist()
    pairs = frame[args.text_pair_column].fillna("").astype(str).tolist() if args.text_pair_column else None
    return frame, texts, pairs


def _embed(argv: Sequence[str]) -> int:
    from nlptransfer.runs.embed import run_embed_command

    return run_embed_command(argv)


def _export(argv: Sequence[str]) -> int:
    from nlptransfer.export.command import run_export_command

    return run_export_command(argv, setup_logging)


def _cell(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _merge_adapter(argv: Sequence[str]) -> int:
    from pathlib import Path

    from nlptransfer.errors import ConfigError
    from nlptransfer.model.transfer import TransferModel
    from nlptransfer.runs.outputs import check_output_dir

    parser = argparse.ArgumentParser(
        prog="nlptransfer merge-adapter",
        description="Merge a trained LoRA-like adapter into the body's weights and save a plain model, "
        "which loads and predicts without peft and without the adapter's extra compute.",
    )
    parser.add_argument("run_dir", help="Output folder of a run with --strategy lora, loha or ia3.")
    parser.add_argument("output_dir", help="Where to write the merged model (a new or empty folder).")
    parser.add_argument("--overwrite_output_dir", action="store_true", help="Replace a model saved there.")
    _add_trust_remote_code(parser)
    args = parser.parse_args(argv)
    source, target = Path(args.run_dir), Path(args.output_dir)
    if target.resolve() == source.resolve():
        raise ConfigError("OUTPUT_DIR must differ from RUN_DIR: the run keeps its adapter model.")
    check_output_dir(target, args.overwrite_output_dir)
    model = TransferModel.from_pretrained(source, args.trust_remote_code).merge_adapter()
    model.save_pretrained(target)
    print(f"merged the adapter of {source} into a plain model in {target}")
    return 0


def _train_vectors(argv: Sequence[str]) -> int:
    from pathlib import Path

    from nlptransfer.backbones.word_vectors import train_word_vectors
    from nlptransfer.data import read_texts

    parser = argparse.ArgumentParser(
        prog="nlptransfer train-vectors",
        description="Train word2vec or fastText on unlabelled text, for --model word2vec:/fasttext:PATH.",
    )
    parser.add_argument("--input_file", required=True, help="A .txt file (one text per line) or a table.")
    parser.add_argument("--text_column", default="text", help="Column of texts, for tables.")
    parser.add_argument("--output", required=True, help="Where to write the vectors (.txt or .bin).")
    parser.add_argument("--method", default="word2vec", choices=["word2vec", "fasttext"])
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--min_count", type=int, default=2)
    args = parser.parse_args(argv)
    texts = read_texts(args.input_file, args.text_column)
    spec = train_word_vectors(texts, Path(args.output), args.method, args.dim, args.epochs, args.min_count)
    print(f"trained on {len(texts)} texts; use it with: --model {spec}")
    return 0


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "train": _train,
    "pretrain": _pretrain,
    "advise": _advise,
    "compare": _compare,
    "tune": _tune,
    "layers": _layers,
    "predict": _predict,
    "export": _export,
    "embed": _embed,
    "train-vectors": _train_vectors,
    "merge-adapter": _merge_adapter,
}


def run_recipe(command: str, argv: Sequence[str]) -> int:
    """Run a command; user errors end in one clear line, not a traceback."""
    try:
        return COMMANDS[command](argv)
    except TrainingInterrupted as err:
        print(f"{err}", file=sys.stderr)
        return err.exit_code
    except NLPTransferError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        _end_process_group()


def _end_process_group() -> None:
    """Close torch.distributed's process groups before the interpreter exits: left to its exit, gloo's
    threads (FSDP's device-mesh groups among them) can abort a process that has finished its run."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: unknown command '{argv[0]}'." + closest_hint(argv[0], list(COMMANDS)), file=sys.stderr)
        print(USAGE, file=sys.stderr)
        return 2
    return run_recipe(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
