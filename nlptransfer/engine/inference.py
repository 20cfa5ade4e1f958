"""Batched inference sharded over processes: features, logits, evaluation."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from nlptransfer.data import Collator, EncodedDataset, Split
from nlptransfer.engine.context import RunContext
from nlptransfer.model.transfer import TransferModel


def encode_split(model: TransferModel, split: Split) -> EncodedDataset:
    return EncodedDataset(model.preprocess(split.inputs, split.pairs), split.labels)


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Batches of similar-length examples: almost no compute is spent on padding."""
    order = np.argsort(lengths, kind="stable").tolist()
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def inference_loader(dataset: Dataset, model: TransferModel, batch_size: int) -> DataLoader:
    if isinstance(dataset, EncodedDataset):
        batches = length_sorted_batches(dataset.lengths(), batch_size)
        return DataLoader(dataset, batch_sampler=batches, collate_fn=Collator(model.backbone))
    return DataLoader(dataset, batch_size=batch_size)


def run_inference(
    fn: Callable[..., torch.Tensor], dataset: Dataset, model: TransferModel, ctx: RunContext, desc: str
) -> torch.Tensor:
    """Apply ``fn`` to every example, sharded over processes; every process gets all outputs."""
    accelerator = ctx.accelerator
    loader = accelerator.prepare_data_loader(inference_loader(dataset, model, ctx.config.eval_batch_size))
    outputs = None
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, disable=not ctx.show_progress, leave=False):
            batch.pop("labels")
            idx = batch.pop("idx")
            values = fn(**batch).float()
            # Shards can end with batches of different sizes: pad, gather, drop the padding.
            values = accelerator.gather(accelerator.pad_across_processes(values, dim=0))
            idx = accelerator.gather(accelerator.pad_across_processes(idx, dim=0, pad_index=-1))
            if outputs is None:
                outputs = torch.zeros(len(dataset), *values.shape[1:])
            keep = idx >= 0
            outputs[idx[keep].cpu()] = values[keep].cpu()
    assert outputs is not None  # load_data never returns an empty split
    return outputs


def predict_split(
    model: torch.nn.Module, dataset: Dataset, ctx: RunContext, desc: str
) -> tuple[torch.Tensor, np.ndarray]:
    """The model's outputs (logits) for a split and its targets as the metrics read them."""
    model.eval()
    unwrapped = ctx.accelerator.unwrap_model(model)
    outputs = run_inference(model, dataset, unwrapped, ctx, desc)
    return outputs, unwrapped.task.references(dataset.labels)


def evaluate_split(model: torch.nn.Module, dataset: Dataset, ctx: RunContext, desc: str) -> dict[str, float]:
    outputs, references = predict_split(model, dataset, ctx, desc)
    task = ctx.accelerator.unwrap_model(model).task
    return ctx.metrics.compute(task.predictions(outputs), references)
