"""The training loop on accelerate: one CPU, one GPU, many GPUs or nodes."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from nlptransfer.config import FinetuneConfig
from nlptransfer.data import (
    Collator,
    EncodedDataset,
    FeatureDataset,
    LengthGroupedSampler,
    Split,
    TextClassificationData,
)
from nlptransfer.errors import NLPTransferError
from nlptransfer.metrics import MetricSet
from nlptransfer.model import TransferModel
from nlptransfer.strategies import Strategy

logger = logging.getLogger(__name__)


class TrainingError(NLPTransferError, RuntimeError):
    """Training cannot go on (for example the loss became NaN)."""


@dataclass
class RunContext:
    """What every step of a run needs, passed as one object."""

    config: FinetuneConfig
    strategy: Strategy
    accelerator: Accelerator
    metrics: MetricSet

    @property
    def show_progress(self) -> bool:
        return self.accelerator.is_local_main_process


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    validation: dict[str, float]


@dataclass
class FitResult:
    history: list[EpochLog] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("-inf")
    seen_indices: list[int] = field(default_factory=list)


def build_accelerator(config: FinetuneConfig) -> Accelerator:
    # Without cpu=True, a CPU-only `accelerate launch --multi_gpu` runs unsynchronised copies.
    accelerator = Accelerator(
        cpu=config.cpu or not torch.cuda.is_available(),
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
    )
    if accelerator.device.type == "cpu":
        if config.mixed_precision == "fp16":
            logger.warning("--mixed_precision fp16 has no effect on CPU; use bf16 or no.")
        local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        set_cpu_threads(config.num_threads, local)
    return accelerator


def set_cpu_threads(requested: int | None, local_processes: int) -> None:
    """Use every core: `accelerate launch` pins one thread per process on CPU by default."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = requested or max(1, cores // max(local_processes, 1))
    torch.set_num_threads(threads)
    logger.debug("using %d CPU threads per process", threads)


def encode_split(model: TransferModel, split: Split) -> EncodedDataset:
    return EncodedDataset(model.preprocess(split.texts, split.pairs), split.labels)


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


def evaluate_split(model: torch.nn.Module, dataset: Dataset, ctx: RunContext, desc: str) -> dict[str, float]:
    model.eval()
    logits = run_inference(model, dataset, ctx.accelerator.unwrap_model(model), ctx, desc)
    labels = dataset.labels.tolist() if isinstance(dataset.labels, torch.Tensor) else dataset.labels
    return ctx.metrics.compute(logits.argmax(-1).tolist(), labels)


def build_datasets(
    model: TransferModel, data: TextClassificationData, ctx: RunContext
) -> tuple[dict[str, Dataset], float]:
    """Tokenised splits, or body features for frozen bodies; and seconds spent extracting.

    A frozen body runs once per example, under inference mode, for the whole run.
    """
    splits = {"train": data.train, "validation": data.validation}
    if data.test is not None:
        splits["test"] = data.test
    encoded = {name: encode_split(model, split) for name, split in splits.items()}
    if not ctx.strategy.freezes_body(ctx.config):
        return encoded, 0.0
    start = time.perf_counter()
    model.to(ctx.accelerator.device).eval()
    features: dict[str, Dataset] = {}
    for name, dataset in encoded.items():
        values = run_inference(model.layer_features, dataset, model, ctx, f"features ({name})")
        features[name] = FeatureDataset(values, dataset.labels)
    return features, time.perf_counter() - start


def train_loader(dataset: Dataset, model: TransferModel, config: FinetuneConfig) -> DataLoader:
    generator = torch.Generator().manual_seed(config.seed)
    if not isinstance(dataset, EncodedDataset):  # fixed-size features: nothing to pad
        return DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=generator)
    sampler = LengthGroupedSampler(dataset.lengths(), config.batch_size, generator)
    collate = Collator(model.backbone)
    return DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, collate_fn=collate)


def build_scheduler(optimizer: Any, prepared_loader: DataLoader, ctx: RunContext, epochs: int) -> Any:
    """Linear warmup then decay over exactly the optimizer steps the run will take.

    Each process steps once per ``gradient_accumulation_steps`` batches of its own
    shard (and at the end of every epoch); accelerate steps the scheduler once
    per process for each optimizer step.
    """
    config = ctx.config
    per_epoch = math.ceil(len(prepared_loader) / config.gradient_accumulation_steps)
    steps = max(1, per_epoch * epochs * ctx.accelerator.num_processes)
    return transformers.get_linear_schedule_with_warmup(optimizer, int(steps * config.warmup_ratio), steps)


def train_epoch(
    model: torch.nn.Module, loader: DataLoader, optimizer: Any, scheduler: Any, ctx: RunContext,
    epoch: int, seen: list[int] | None,
) -> float:  # fmt: skip
    model.train()
    accelerator = ctx.accelerator
    total, count = 0.0, 0
    params = [p for p in model.parameters() if p.requires_grad]
    max_norm = ctx.config.max_grad_norm or float("inf")
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not ctx.show_progress, leave=False)
    for step, batch in enumerate(bar):
        with accelerator.accumulate(model):
            labels = batch.pop("labels")
            idx = batch.pop("idx")
            loss = F.cross_entropy(model(**batch), labels)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                # After the all-reduce every process holds the same gradients, so all of
                # them see a NaN together and stop together instead of deadlocking.
                norm = accelerator.clip_grad_norm_(params, max_norm)
                if norm is not None and not torch.isfinite(torch.as_tensor(norm)):
                    raise TrainingError(
                        f"The gradients became {float(norm)} at epoch {epoch}, step {step}. Lower "
                        "--learning_rate, or use --mixed_precision bf16/no if it was fp16."
                    )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        if seen is not None:
            seen.extend(idx.tolist())
        total, count = total + loss.item(), count + 1
        bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
    return total / max(count, 1)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def fit(
    model: TransferModel, datasets: dict[str, Dataset], groups: list[dict[str, Any]], ctx: RunContext
) -> FitResult:
    """Train for the strategy's epochs, evaluate each one, keep the best, stop early if told."""
    config, strategy, accelerator = ctx.config, ctx.strategy, ctx.accelerator
    epochs, patience = strategy.epochs(config), strategy.patience(config)
    optimizer = torch.optim.AdamW(groups)
    prepared, optimizer, loader = accelerator.prepare(
        model, optimizer, train_loader(datasets["train"], model, config)
    )
    scheduler = accelerator.prepare(build_scheduler(optimizer.optimizer, loader, ctx, epochs))
    result, best_state = FitResult(), trainable_state(model)
    for epoch in range(1, epochs + 1):
        seen = result.seen_indices if epoch == 1 else None
        loss = train_epoch(prepared, loader, optimizer, scheduler, ctx, epoch, seen)
        scores = evaluate_split(prepared, datasets["validation"], ctx, "validation")
        result.history.append(EpochLog(epoch, loss, scores))
        logger.info("epoch %d/%d: train_loss=%.4f validation %s", epoch, epochs, loss, _fmt(scores))
        score = scores[config.metric_for_best_model]
        if score > result.best_score:
            result.best_epoch, result.best_score = epoch, score
            best_state = trainable_state(accelerator.unwrap_model(prepared))
        elif patience is not None and epoch - result.best_epoch >= patience:
            logger.info("early stopping: no %s gain for %d epochs", config.metric_for_best_model, patience)
            break
    # Keep the best epoch's weights, not the last epoch's.
    model.load_state_dict(best_state, strict=False)
    accelerator.free_memory()
    return result


def _fmt(scores: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in scores.items())


def distributed_report(accelerator: Accelerator, seen: list[int], num_train: int) -> dict[str, Any]:
    """Which training examples each process saw in the first epoch."""
    per_rank = gather_object([sorted(set(seen))])
    sets = [set(s) for s in per_rank]
    overlap = len(set.intersection(*sets)) if len(sets) > 1 else 0
    return {
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "train_examples_per_process": [len(s) for s in sets],
        "examples_seen_by_several_processes": overlap,
        "train_examples_covered": len(set.union(*sets)),
        "num_train_examples": num_train,
    }
