"""The training loop on accelerate: one CPU, one GPU, many GPUs or nodes."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from nlptransfer.config import FinetuneConfig
from nlptransfer.context import RunContext
from nlptransfer.data import Collator, EncodedDataset, LengthGroupedSampler, TextClassificationData
from nlptransfer.errors import NLPTransferError
from nlptransfer.features import extract_features
from nlptransfer.inference import encode_split, evaluate_split
from nlptransfer.model import TransferModel

logger = logging.getLogger(__name__)


class TrainingError(NLPTransferError, RuntimeError):
    """Training cannot go on (for example the loss became NaN)."""


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
    return extract_features(model, encoded, ctx)


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
