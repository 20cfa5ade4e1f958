"""The training loop on accelerate: one CPU, one GPU, many GPUs or nodes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset

from nlptransfer.config import FinetuneConfig
from nlptransfer.data import (
    Collator,
    EncodedDataset,
    EpochSampler,
    FeatureDataset,
    LengthGroupedSampler,
    TextClassificationData,
)
from nlptransfer.engine.checkpoint import Checkpoint
from nlptransfer.engine.context import RunContext
from nlptransfer.engine.contrastive import contrastive_loop
from nlptransfer.engine.features import extract_features
from nlptransfer.engine.inference import encode_split, evaluate_split
from nlptransfer.engine.loop import EpochPlan, Snapshot, prepare_phase, run_epochs
from nlptransfer.errors import ConfigError
from nlptransfer.model.heads import fit_logistic_head
from nlptransfer.model.layers import count_parameters
from nlptransfer.model.transfer import TransferModel, align_padding
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
    # What the phase was set to run with, strategy defaults resolved (None in checkpoints of
    # earlier releases). learning_rate is the highest of its parameter groups (None for
    # logistic-cv, which fits no learning rate); patience None means no early stopping.
    learning_rate: float | None = None
    epochs: int | None = None
    patience: int | None = None


@dataclass
class FitResult:
    history: list[EpochLog] = field(default_factory=list)
    phases: list[PhaseLog] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("-inf")
    seen_indices: list[int] = field(default_factory=list)
    tokenize_seconds: float = 0.0
    feature_extraction_seconds: float = 0.0
    feature_extraction_seconds_by_split: dict[str, float] = field(default_factory=dict)
    # The splits (tokens or cached features) that match the restored best weights.
    eval_datasets: dict[str, Dataset] = field(default_factory=dict)
    # The body features last extracted (empty when no phase froze the body).
    features: dict[str, Dataset] = field(default_factory=dict)
    # Index of the phase whose datasets ``eval_datasets`` are (-1: the token splits).
    eval_phase: int = -1
    body_trained: bool = False

    def add_extraction(self, seconds: dict[str, float]) -> None:
        self.feature_extraction_seconds += sum(seconds.values())
        for name, value in seconds.items():
            self.feature_extraction_seconds_by_split[name] = (
                self.feature_extraction_seconds_by_split.get(name, 0.0) + value
            )

    def epochs_before_phase(self) -> int:
        return sum(p.epochs_run for p in self.phases)


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


def train_loader(
    dataset: Dataset, model: TransferModel, config: FinetuneConfig, seed: int
) -> tuple[DataLoader, EpochSampler]:
    """A loader whose order depends only on (seed, epoch), and the sampler to set the epoch on."""
    # The loader's own generator: iterating it must not draw from the global RNG,
    # or a resumed run's dropout masks would differ from an uninterrupted one's.
    generator = torch.Generator().manual_seed(seed)
    if not isinstance(dataset, EncodedDataset):  # fixed-size features: nothing to pad
        sampler = EpochSampler(len(dataset), seed)
        loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, generator=generator)
        return loader, sampler
    if model.backbone.variable_length:
        sampler = LengthGroupedSampler(dataset.lengths(), config.batch_size, seed)
    else:  # images: every example has the same size
        sampler = EpochSampler(len(dataset), seed)
    collate = Collator(model.backbone)
    loader = DataLoader(
        dataset, batch_size=config.batch_size, sampler=sampler, collate_fn=collate, generator=generator
    )
    return loader, sampler


class BestWeights:
    """The weights of the best epoch so far, over all phases.

    Covers every parameter that trained in any phase: one frozen until now still
    holds the value it had at the best epoch, so it joins the snapshot as is. Saved
    floating-point buffers (BatchNorm's running statistics) always join: the best
    epoch's weights are only right with that epoch's statistics.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.state: dict[str, torch.Tensor] = {}

    def _tensors(self) -> dict[str, torch.Tensor]:
        saved = self.model.state_dict(keep_vars=True)
        buffers = {n: b for n, b in self.model.named_buffers() if n in saved and b.is_floating_point()}
        return {**dict(self.model.named_parameters()), **buffers}

    def cover_trainable(self) -> None:
        params = dict(self.model.named_parameters())
        for name, tensor in self._tensors().items():
            trains = name not in params or tensor.requires_grad
            if trains and name not in self.state:
                self.state[name] = tensor.detach().cpu().clone()

    def update(self) -> None:
        tensors = self._tensors()
        self.state = {name: tensors[name].detach().cpu().clone() for name in self.state}

    def restore(self) -> None:
        self.model.load_state_dict(self.state, strict=False)


def fit(
    model: TransferModel, data: TextClassificationData, phases: list[Phase], ctx: RunContext
) -> FitResult:
    """Run the strategy's phases; evaluate every epoch, keep the best weights, stop early if told.

    Frozen-body phases train on body features computed once (and cached on
    disk); a phase that trains the body makes later frozen phases compute them
    anew. A resumed run skips the phases its checkpoint had finished.
    """
    session = ctx.session
    align_padding(model, ctx.accelerator.device)
    start = time.perf_counter()
    encoded = encode_splits(model, data)
    result, best = FitResult(eval_datasets=encoded), BestWeights(model)
    result.tokenize_seconds = time.perf_counter() - start
    if session.resume is not None:
        _restore(session.resume, model, result, best)
    session.snapshot = lambda: _snapshot(ctx, result, best)
    features: dict[str, Dataset] | None = None
    for index, phase in enumerate(phases):
        if index < session.progress.phase:
            continue
        groups = phase.configure(model)
        best.cover_trainable()
        session.trained_params = set(best.state)
        if phase.freezes_body and features is None:
            features, seconds = extract_features(model, encoded, ctx, use_cache=not result.body_trained)
            result.add_extraction(seconds)
            result.features = features
        datasets = features if phase.freezes_body else encoded
        assert datasets is not None
        if result.eval_phase == index:
            result.eval_datasets = datasets
        recorder = _epoch_recorder(model, phase, index, datasets, ctx, result, best)
        run = PhaseRun(model, phase, index, datasets, groups, ctx, recorder)
        if index == 0 or not result.seen_indices:
            run.seen = result.seen_indices
        LOOPS[phase.loop](run)
        ctx.accelerator.free_memory()
        epochs_run = len(result.history) - result.epochs_before_phase()
        result.phases.append(_phase_log(model, phase, groups, epochs_run))
        session.progress.next_phase()
        if any(p.requires_grad for p in model.backbone.parameters()):
            features, result.body_trained = None, True
    best.restore()
    return result


def _snapshot(ctx: RunContext, result: FitResult, best: BestWeights) -> Snapshot:
    """What a checkpoint holds besides accelerate's state: history, best epoch and its weights."""
    state = {
        "history": [asdict(h) for h in result.history],
        "phases": [asdict(p) for p in result.phases],
        "best_epoch": result.best_epoch,
        "best_score": result.best_score,
        "eval_phase": result.eval_phase,
        "body_trained": result.body_trained,
        "feature_extraction_seconds": result.feature_extraction_seconds,
        "feature_extraction_seconds_by_split": result.feature_extraction_seconds_by_split,
        "best_weights": sorted(best.state),
        "config": ctx.config.to_dict(),
    }
    return state, dict(best.state), {"seen_indices": result.seen_indices}


def _restore(checkpoint: Checkpoint, model: TransferModel, result: FitResult, best: BestWeights) -> None:
    """Put back what the checkpoint's run had done, before its phase configures the model."""
    state = checkpoint.state
    result.history = [EpochLog(**h) for h in state["history"]]
    result.phases = [PhaseLog(**p) for p in state["phases"]]
    result.best_epoch, result.best_score = state["best_epoch"], state["best_score"]
    result.eval_phase, result.body_trained = state["eval_phase"], state["body_trained"]
    result.feature_extraction_seconds = state["feature_extraction_seconds"]
    result.feature_extraction_seconds_by_split = state.get("feature_extraction_seconds_by_split", {})
    result.seen_indices[:] = checkpoint.process_state.get("seen_indices", [])
    best.state = {name: checkpoint.tensors[name] for name in state["best_weights"]}
    # The phase may extract features from the body before accelerate loads its state.
    weights = load_file(str(checkpoint.path / "model.safetensors"))
    model.load_state_dict({k.removeprefix("module."): v for k, v in weights.items()}, strict=False)


def _epoch_recorder(
    model: TransferModel, phase: Phase, index: int, datasets: dict[str, Dataset], ctx: RunContext,
    result: FitResult, best: BestWeights,
) -> Callable[[float], bool]:  # fmt: skip
    """The end-of-epoch step of one phase: validate, log, keep the best, decide on early stopping."""
    config = ctx.config
    phase_start = result.epochs_before_phase()

    def end_epoch(loss: float) -> bool:
        # Derived, not remembered: a resumed run gets the same answer.
        phase_best = max(phase_start, result.best_epoch)
        epoch = len(result.history) + 1
        scores = evaluate_split(model, datasets["validation"], ctx, "validation") if phase.evaluate else {}
        result.history.append(EpochLog(epoch, phase.name, loss, scores))
        logger.info("epoch %d (%s): train_loss=%.4f validation %s", epoch, phase.name, loss, _fmt(scores))
        ctx.session.log({"train/epoch_loss": loss, **{f"validation/{k}": v for k, v in scores.items()}})
        if not phase.evaluate:
            return False
        score = scores[config.metric_for_best_model]
        if score > result.best_score:
            result.best_epoch, result.best_score = epoch, score
            result.eval_datasets, result.eval_phase = datasets, index
            best.update()
        elif phase.patience is not None and epoch - phase_best >= phase.patience:
            logger.info(
                "early stopping: no %s gain for %d epochs", config.metric_for_best_model, phase.patience
            )
            return True
        return False

    return end_epoch


def _phase_log(model: TransferModel, phase: Phase, groups: ParamGroups, epochs_run: int) -> PhaseLog:
    trained = [g.name for g in model.backbone.layer_groups() if any(p.requires_grad for _, p in g.parameters)]
    trained += [
        name
        for name in ("pooling", "head")
        if any(p.requires_grad for p in getattr(model, name).parameters())
    ]
    trainable, _ = count_parameters(model)
    rates = [g["lr"] for g in groups if "lr" in g]
    learning_rate = max(rates) if rates and phase.loop != "logistic-cv" else None
    return PhaseLog(
        phase.name, phase.loop, epochs_run, trainable, trained, learning_rate, phase.epochs, phase.patience
    )


def gradient_loop(run: PhaseRun) -> None:
    """Minibatch AdamW with warmup and a learning-rate schedule, on tokens or cached features."""
    session, config = run.ctx.session, run.ctx.config
    loader, sampler = train_loader(run.datasets["train"], run.model, config, config.seed + run.index)
    prepared, optimizer, loader, scheduler = prepare_phase(
        session, run.model, run.groups, loader, run.phase.epochs
    )

    def loss(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        labels, idx = batch.pop("labels"), batch.pop("idx")
        if run.seen is not None and session.progress.epoch == 1:
            run.seen.extend(idx.tolist())
        return F.cross_entropy(model(**batch), labels)

    plan = EpochPlan(prepared, loader, sampler, optimizer, scheduler, run.phase.epochs, loss, run.end_epoch)
    run_epochs(session, plan)


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
