"""One fine-tuning run of the benchmark in its own process; prints one JSON line.

    python scripts/bench/finetune_worker.py ours|trainer-default|trainer-best '{"epochs": 1, ...}'

Options: epochs, batch_size, lr, max_length, seed, max_train_examples (None: all),
device (cpu or cuda) and mixed_precision (no, bf16 or fp16); for ``trainer-best``,
unfreeze_layers (train only the top K layers and the head, the rest frozen as
``nlptransfer --unfreeze_layers K`` freezes it) and validate (score the validation split
after every epoch, as nlptransfer does).

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


def peak_gpu_mb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def warm_up(model: Any, o: dict[str, Any]) -> None:
    """One forward and backward pass of this tool's model class before the clock starts.

    The first pass on a GPU pays one-off costs (CUDA context, kernel registration, lazy
    imports: over 10 s on an H100) that would otherwise land in one tool's timer and not
    the other's, depending on what its imports happened to load earlier.
    """
    import torch

    device = torch.device("cuda" if o["device"] == "cuda" else "cpu")
    model.to(device).train()
    ids = torch.randint(1000, 2000, (o["batch_size"], 32), device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(o["mixed_precision"])
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    logits = out if isinstance(out, torch.Tensor) else out.logits
    logits.float().sum().backward()
    model.to("cpu")
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def ours(o: dict[str, Any]) -> dict[str, Any]:
    from nlptransfer import FinetuneConfig
    from nlptransfer.model.transfer import TransferModel
    from nlptransfer.runs.finetune import train

    warm_up(TransferModel.from_backbone("minilm", ["a", "b"], max_length=o["max_length"]), o)

    with tempfile.TemporaryDirectory() as out:
        config = FinetuneConfig(
            strategy="finetune", body_lr_scale=1.0, learning_rate=o["lr"], epochs=o["epochs"],
            batch_size=o["batch_size"], max_length=o["max_length"], seed=o["seed"], warmup_ratio=0.0,
            weight_decay=0.0, max_train_examples=o.get("max_train_examples"),
            # Two validation examples: the per-epoch validation pass costs nothing, as Trainer runs none.
            validation_samples_per_label=1, output_dir=out, save_steps=0, save_every_epoch=False,
            report_to=["none"], cpu=o["device"] == "cpu", mixed_precision=o["mixed_precision"],
        )  # fmt: skip
        results = train(config)
    seen = results["num_train_examples"] * results["epochs_run"]
    # Trainer's train_runtime starts after tokenisation: loop_seconds is the like-for-like figure.
    return {
        "train_seconds": results["train_seconds"],
        "samples": seen,
        "loop_seconds": results["train_seconds"] - results["tokenize_seconds"],
        "tokenize_seconds": results["tokenize_seconds"],
        "test_accuracy": results["test"]["accuracy"],
    }


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
    warm_up(AutoModelForSequenceClassification.from_pretrained(path, num_labels=2), o)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(data.label_names))
    padding = False if best else "max_length"  # run_glue: --pad_to_max_length defaults to True

    def dataset(split: Any) -> list[dict[str, Any]]:
        enc = tokenizer(split.inputs, padding=padding, max_length=o["max_length"], truncation=True)
        return [{**{k: enc[k][i] for k in enc}, "labels": split.labels[i]} for i in range(len(split))]

    train_set, test_set = dataset(data.train), dataset(data.test)
    if o.get("unfreeze_layers") is not None:
        freeze_below_top(model, o["unfreeze_layers"])
    validate = bool(o.get("validate"))
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=o["batch_size"], per_device_eval_batch_size=64,
            num_train_epochs=o["epochs"], learning_rate=o["lr"], seed=o["seed"], save_strategy="no",
            report_to="none", disable_tqdm=True, use_cpu=o["device"] == "cpu",
            bf16=o["mixed_precision"] == "bf16", fp16=o["mixed_precision"] == "fp16",
            train_sampling_strategy="group_by_length" if best else "random",
            eval_strategy="epoch" if validate else "no",
        )  # fmt: skip
        # run_glue pads to a multiple of 8 under mixed precision, as nlptransfer does on a GPU.
        multiple = 8 if o["mixed_precision"] != "no" and o["device"] == "cuda" else None
        collator = (
            DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple) if best else default_data_collator
        )
        run = Trainer(model=model, args=args, train_dataset=train_set, data_collator=collator,
                      eval_dataset=dataset(data.validation) if validate else None)  # fmt: skip
        metrics = run.train().metrics
        predictions = run.predict(test_set)
    # Length-grouped evaluation returns examples in its own order: score against the labels it returns.
    accuracy = float(np.mean(predictions.predictions.argmax(-1) == predictions.label_ids))
    return {"train_seconds": metrics["train_runtime"], "loop_seconds": metrics["train_runtime"],
            "samples": len(train_set) * o["epochs"], "test_accuracy": accuracy}  # fmt: skip


def freeze_below_top(model: Any, k: int) -> None:
    """Embeddings and every layer below the top ``k`` frozen; the top layers, pooler and head train."""
    body = model.base_model
    for param in body.parameters():
        param.requires_grad_(False)
    for layer in body.encoder.layer[len(body.encoder.layer) - k :]:
        layer.requires_grad_(True)
    for module in (getattr(body, "pooler", None), getattr(model, "classifier", None)):
        if module is not None:
            module.requires_grad_(True)


def main() -> None:
    mode, options = sys.argv[1], json.loads(sys.argv[2])
    start = time.perf_counter()
    result = ours(options) if mode == "ours" else trainer(options, best=mode == "trainer-best")
    result.update(mode=mode, wall_seconds=time.perf_counter() - start, peak_rss_mb=peak_rss_mb(),
                  peak_gpu_mb=peak_gpu_mb())  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
