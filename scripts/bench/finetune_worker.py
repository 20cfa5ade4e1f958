"""One fine-tuning run of the benchmark in its own process; prints one JSON line.

    python scripts/bench/finetune_worker.py ours|trainer-default|trainer-best '{"epochs": 1, ...}'

- ``ours``: ``nlptransfer`` fine-tuning of every layer at one learning rate;
- ``trainer-default``: transformers ``Trainer`` as ``run_glue.py`` sets it up by default
  (every text padded to ``max_length``, random batches);
- ``trainer-best``: ``Trainer`` with dynamic padding and length-grouped batches.

All three: the same MiniLM weights, movie-review splits, batch size, epochs, learning
rate (linear decay, no warmup, no weight decay, clipping at 1.0), max_length and seed.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from typing import Any

import numpy as np


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def ours(o: dict[str, Any]) -> dict[str, Any]:
    from nlptransfer import FinetuneConfig
    from nlptransfer.runner import train

    with tempfile.TemporaryDirectory() as out:
        config = FinetuneConfig(
            strategy="finetune", body_lr_scale=1.0, learning_rate=o["lr"], epochs=o["epochs"],
            batch_size=o["batch_size"], max_length=o["max_length"], seed=o["seed"], warmup_ratio=0.0,
            weight_decay=0.0, max_train_examples=o.get("max_train_examples"),
            # Two validation examples: the per-epoch validation pass costs nothing, as Trainer runs none.
            validation_samples_per_label=1, output_dir=out, save_steps=0, save_every_epoch=False,
            report_to=["none"],
        )  # fmt: skip
        results = train(config)
    seen = results["num_train_examples"] * results["epochs_run"]
    return {"train_seconds": results["train_seconds"], "samples": seen,
            "test_accuracy": results["test"]["accuracy"]}  # fmt: skip


def trainer(o: dict[str, Any], best: bool) -> dict[str, Any]:
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )

    from nlptransfer import FinetuneConfig
    from nlptransfer.backbones.sources import resolve_model
    from nlptransfer.data import load_data

    data = load_data(FinetuneConfig(max_train_examples=o.get("max_train_examples"), seed=o["seed"]))
    path = resolve_model("minilm").path
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(data.label_names))
    padding = False if best else "max_length"  # run_glue: --pad_to_max_length defaults to True

    def dataset(split: Any) -> list[dict[str, Any]]:
        enc = tokenizer(split.texts, padding=padding, max_length=o["max_length"], truncation=True)
        return [{**{k: enc[k][i] for k in enc}, "labels": split.labels[i]} for i in range(len(split))]

    train_set, test_set = dataset(data.train), dataset(data.test)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=o["batch_size"], per_device_eval_batch_size=64,
            num_train_epochs=o["epochs"], learning_rate=o["lr"], seed=o["seed"], save_strategy="no",
            report_to="none", disable_tqdm=True, use_cpu=True,
            train_sampling_strategy="group_by_length" if best else "random",
        )  # fmt: skip
        collator = DataCollatorWithPadding(tokenizer) if best else default_data_collator
        run = Trainer(model=model, args=args, train_dataset=train_set, data_collator=collator)
        metrics = run.train().metrics
        predictions = run.predict(test_set)
    # Length-grouped evaluation returns examples in its own order: score against the labels it returns.
    accuracy = float(np.mean(predictions.predictions.argmax(-1) == predictions.label_ids))
    return {"train_seconds": metrics["train_runtime"], "samples": len(train_set) * o["epochs"],
            "test_accuracy": accuracy}  # fmt: skip


def main() -> None:
    mode, options = sys.argv[1], json.loads(sys.argv[2])
    start = time.perf_counter()
    result = ours(options) if mode == "ours" else trainer(options, best=mode == "trainer-best")
    result.update(mode=mode, wall_seconds=time.perf_counter() - start, peak_rss_mb=peak_rss_mb())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
