"""The training loop on accelerate: one CPU, one GPU, many GPUs or nodes."""

from __future__ import annotations

import logging
import math
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
from nlptransfer.context import RunContext, optimizer_step
from nlptransfer.contrastive import contrastive_loop
from nlptransfer.data import (
    Collator,
    EncodedDataset,
    FeatureDataset,
    LengthGroupedSampler,
    TextClassificationData,
)
from nlptransfer.errors import ConfigError
from nlptransfer.features import extract_features
from nlptransfer.heads import fit_logistic_head
from nlptransfer.inference import encode_split, evaluate_split
from nlptransfer.layers import count_parameters
from nlptransfer.model import TransferModel
from nlptransfer.strategies.base import ParamGroups, Phase

logger = logging.getLogger(__name__)


@dataclass
class EpochLog:
    epoch: int
    phase: str
    train_loss: float
    validation: dict[str, float]


@dataclass
class PhaseLog:
    """What one phase trained: reported in results.json."""

    name: str
    loop: str
    epochs_run: int
    trainable_parameters: int
    trained_groups: list[str]


@dataclass
class FitResult:
    history: list[EpochLog] = field(default_factory=list)
    phases: list[PhaseLog] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("-inf")
    seen_indices: list[int] = field(default_factory=list)
    feature_extraction_seconds: float = 0.0
    # The splits (tokens or cached features) that match the restored best weights.
    eval_datasets: dict[str, Dataset] = field(default_factory=dict)
    # The body features last extracted (empty when no phase froze the body).
    features: dict[str, Dataset] = field(default_factory=dict)


@dataclass
class PhaseRun:
    """What a training loop gets for one phase."""

    model: TransferModel
    phase: Phase
    index: int
    datasets: dict[str, Dataset]
    groups: ParamGroups
    ctx: RunContext
    end_epoch: Callable[[float], bool]  # records an epoch; True means stop early
    seen: list[int] | None = None  # filled with the example indices of the first epoch


def encode_splits(model: TransferModel, data: TextClassificationData) -> dict[str, EncodedDataset]:
    splits = {"train": data.train, "validation": data.validation}
    if data.test is not None:
        splits["test"] = data.test
    return {name: encode_split(model, split) for name, split in splits.items()}


def train_loader(dataset: Dataset, model: TransferModel, config: FinetuneConfig, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
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
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not ctx.show_progress, leave=False)
    for step, batch in enumerate(bar):
        with accelerator.accumulate(model):
            labels = batch.pop("labels")
            idx = batch.pop("idx")
            loss = F.cross_entropy(model(**batch), labels)
            accelerator.backward(loss)
            optimizer_step(ctx, params, optimizer, scheduler, f"epoch {epoch}, step {step}")
        if seen is not None:
            seen.extend(idx.tolist())
        total, count = total + loss.item(), count + 1
        bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
    return total / max(count, 1)


class BestWeights:
    """The weights of the best epoch so far, over all phases.

    Covers every parameter that trained in any phase: one frozen until now still
    holds the value it had at the best epoch, so it joins the snapshot as is.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.state: dict[str, torch.Tensor] = {}

    def cover_trainable(self) -> None:
        for name, param in self.model.named_parameters():
            if param.requires_grad and name not in self.state:
                self.state[name] = param.detach().cpu().clone()

    def update(self) -> None:
        params = dict(self.model.named_parameters())
        self.state = {name: params[name].detach().cpu().clone() for name in self.state}

    def restore(self) -> None:
        self.model.load_state_dict(self.state, strict=False)


def fit(
    model: TransferModel, data: TextClassificationData, phases: list[Phase], ctx: RunContext
) -> FitResult:
    """Run the strategy's phases; evaluate every epoch, keep the best weights, stop early if told.

    Frozen-body phases train on body features computed once (and cached on
    disk); a phase that trains the body makes later frozen phases compute them anew.
    """
    encoded = encode_splits(model, data)
    result, best = FitResult(eval_datasets=encoded), BestWeights(model)
    features: dict[str, Dataset] | None = None
    body_trained = False
    for index, phase in enumerate(phases):
        groups = phase.configure(model)
        best.cover_trainable()
        if phase.freezes_body and features is None:
            features, seconds = extract_features(model, encoded, ctx, use_cache=not body_trained)
            result.feature_extraction_seconds += seconds
            result.features = features
        datasets = features if phase.freezes_body else encoded
        assert datasets is not None
        recorder = _epoch_recorder(model, phase, datasets, ctx, result, best)
        run = PhaseRun(model, phase, index, datasets, groups, ctx, recorder)
        if not result.seen_indices:
            run.seen = result.seen_indices
        start_epochs = len(result.history)
        LOOPS[phase.loop](run)
        ctx.accelerator.free_memory()
        result.phases.append(_phase_log(model, phase, len(result.history) - start_epochs))
        if any(p.requires_grad for p in model.backbone.parameters()):
            features, body_trained = None, True
    best.restore()
    return result


def _epoch_recorder(
    model: TransferModel, phase: Phase, datasets: dict[str, Dataset], ctx: RunContext, result: FitResult,
    best: BestWeights,
) -> Callable[[float], bool]:  # fmt: skip
    """The end-of-epoch step of one phase: validate, log, keep the best, decide on early stopping."""
    config = ctx.config
    phase_start = len(result.history)
    phase_best = phase_start

    def end_epoch(loss: float) -> bool:
        nonlocal phase_best
        epoch = len(result.history) + 1
        scores = evaluate_split(model, datasets["validation"], ctx, "validation") if phase.evaluate else {}
        result.history.append(EpochLog(epoch, phase.name, loss, scores))
        logger.info("epoch %d (%s): train_loss=%.4f validation %s", epoch, phase.name, loss, _fmt(scores))
        if not phase.evaluate:
            return False
        score = scores[config.metric_for_best_model]
        if score > result.best_score:
            result.best_epoch, result.best_score, phase_best = epoch, score, epoch
            result.eval_datasets = datasets
            best.update()
        elif phase.patience is not None and epoch - phase_best >= phase.patience:
            logger.info(
                "early stopping: no %s gain for %d epochs", config.metric_for_best_model, phase.patience
            )
            return True
        return False

    return end_epoch


def _phase_log(model: TransferModel, phase: Phase, epochs_run: int) -> PhaseLog:
    trained = [g.name for g in model.backbone.layer_groups() if any(p.requires_grad for _, p in g.parameters)]
    trained += [
        name
        for name in ("pooling", "head")
        if any(p.requires_grad for p in getattr(model, name).parameters())
    ]
    trainable, _ = count_parameters(model)
    return PhaseLog(phase.name, phase.loop, epochs_run, trainable, trained)


def gradient_loop(run: PhaseRun) -> None:
    """Minibatch AdamW with warmup and linear decay, on tokens or cached features."""
    ctx, accelerator, config = run.ctx, run.ctx.accelerator, run.ctx.config
    optimizer = torch.optim.AdamW(run.groups)
    loader = train_loader(run.datasets["train"], run.model, config, config.seed + run.index)
    prepared, optimizer, loader = accelerator.prepare(run.model, optimizer, loader)
    scheduler = accelerator.prepare(build_scheduler(optimizer.optimizer, loader, ctx, run.phase.epochs))
    for epoch in range(1, run.phase.epochs + 1):
        seen = run.seen if epoch == 1 else None
        loss = train_epoch(prepared, loader, optimizer, scheduler, ctx, epoch, seen)
        if run.end_epoch(loss):
            break


def logistic_loop(run: PhaseRun) -> None:
    """Fit the head by scikit-learn logistic regression (regularisation by cross-validation)."""
    model, config = run.model, run.ctx.config
    train = run.datasets["train"]
    if not isinstance(train, FeatureDataset):
        raise ConfigError("--head logistic-cv fits on frozen features; this phase trains the body.")
    with torch.no_grad():
        features = model.pooling.combine(torch.as_tensor(np.asarray(train.features), dtype=torch.float32))
    loss = fit_logistic_head(model.head, features.numpy(), train.labels.numpy(), config.seed)
    run.end_epoch(loss)


LOOPS: dict[str, Callable[[PhaseRun], None]] = {
    "gradient": gradient_loop,
    "logistic-cv": logistic_loop,
    "contrastive": contrastive_loop,
}


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
