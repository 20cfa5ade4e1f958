"""Fitting a model phase by phase: each phase's objective, validation, best weights and early stopping."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch.utils.data import Dataset

from nlptransfer.config import FinetuneConfig
from nlptransfer.data import (
    EncodedDataset,
    LabelledData,
)
from nlptransfer.engine.activations import ActivationReport, activation_block, activation_datasets
from nlptransfer.engine.cache import weights_fingerprint
from nlptransfer.engine.checkpoint import Checkpoint, Snapshot, checkpoint_weights
from nlptransfer.engine.context import RunContext
from nlptransfer.engine.features import extract_features
from nlptransfer.engine.inference import encode_split, evaluate_split
from nlptransfer.engine.loop import run_phase
from nlptransfer.engine.objectives import OBJECTIVES
from nlptransfer.engine.sharding import is_sharded, load_whole, whole
from nlptransfer.errors import ConfigError
from nlptransfer.model.layers import count_parameters
from nlptransfer.model.transfer import TransferModel, align_padding
from nlptransfer.strategies.base import ParamGroups, Phase
from nlptransfer.tasks.metrics import greater_is_better

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
    # --protocol cross-validation: the out-of-fold outputs of the training split and its targets.
    out_of_fold: tuple[torch.Tensor, Any] | None = None
    # The activation cache: which phases trained on stored states, and the time to compute them.
    activations: ActivationReport = field(default_factory=ActivationReport)
    activation_seconds: float = 0.0

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
    seen: list[int] | None = None  # filled with the example indices of the first epoch
    # Filled by a closed-form head under --protocol cross-validation (no validation split).
    out_of_fold: tuple[torch.Tensor, Any] | None = None


def encode_splits(model: TransferModel, data: LabelledData) -> dict[str, EncodedDataset]:
    splits = {"train": data.train, "validation": data.validation, "test": data.test}
    return {name: encode_split(model, split) for name, split in splits.items() if split is not None}


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
                self.state[name] = whole(tensor.detach()).cpu().clone()

    def update(self) -> None:
        tensors = self._tensors()
        self.state = {name: whole(tensors[name].detach()).cpu().clone() for name in self.state}

    def restore(self) -> None:
        load_whole(self.model, self.state)


def fit(model: TransferModel, data: LabelledData, phases: list[Phase], ctx: RunContext) -> FitResult:
    """Run the strategy's phases; evaluate every epoch, keep the best weights, stop early if told.

    Frozen-body phases train on body features computed once (and cached on
    disk); a phase that trains the body makes later frozen phases compute them
    anew. A resumed run skips the phases its checkpoint had finished.
    """
    session = ctx.session
    align_padding(model, ctx.accelerator.device)
    start = time.perf_counter()
    encoded = encode_splits(model, data)
    state = FitState(model, ctx.config, FitResult(eval_datasets=encoded), BestWeights(model))
    result, best = state.result, state.best
    result.tokenize_seconds = time.perf_counter() - start
    session.register_for_checkpointing(state)
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
        datasets = features if phase.freezes_body else phase_tokens(model, encoded, phase, ctx, result)
        assert datasets is not None
        if result.eval_phase == index:
            result.eval_datasets = datasets
        run = PhaseRun(model, phase, index, datasets, groups, ctx)
        if index == 0 or not result.seen_indices:
            run.seen = result.seen_indices
        objective = OBJECTIVES.get(phase.loop).from_phase(run)
        run_phase(session, model, groups, objective, phase.epochs, Validation(run, state))
        ctx.accelerator.free_memory()
        epochs_run = len(result.history) - result.epochs_before_phase()
        result.phases.append(_phase_log(model, phase, groups, epochs_run))
        session.progress.next_phase()
        if any(p.requires_grad for p in model.backbone.parameters()):
            features, result.body_trained = None, True
    best.restore()
    return result


def phase_tokens(
    model: TransferModel, encoded: dict[str, EncodedDataset], phase: Phase, ctx: RunContext, result: FitResult
) -> dict[str, Dataset]:
    """The token splits a phase that trains the body reads: with the states its frozen bottom feeds
    the first trainable block, computed once, when the activation cache applies."""
    reads = OBJECTIVES.get(phase.loop).reads_activations
    block, reason = activation_block(model, ctx, reads)
    if block is not None:
        start = time.perf_counter()
        # A phase that is not evaluated (contrastive pairs) reads its training split only.
        splits = encoded if phase.evaluate else {"train": encoded["train"]}
        cached, reason = activation_datasets(model, splits, ctx, block)
        result.activation_seconds += time.perf_counter() - start
        if cached is not None:
            logger.info("activation cache (%s): %s", phase.name, reason)
            result.activations.add(phase.name, reason, cached)
            return {**encoded, **cached}
    logger.info("activation cache (%s) not used: %s", phase.name, reason)
    result.activations.add(phase.name, reason)
    return dict(encoded)


@dataclass
class FitState:
    """What a checkpoint holds besides accelerate's state: history, best epoch and its weights."""

    model: TransferModel
    config: FinetuneConfig
    result: FitResult
    best: BestWeights

    def state_dict(self) -> Snapshot:
        result = self.result
        state = {
            "history": [asdict(h) for h in result.history],
            "phases": [asdict(p) for p in result.phases],
            "best_epoch": result.best_epoch,
            "best_score": result.best_score,
            "eval_phase": result.eval_phase,
            "body_trained": result.body_trained,
            "feature_extraction_seconds": result.feature_extraction_seconds,
            "feature_extraction_seconds_by_split": result.feature_extraction_seconds_by_split,
            "best_weights": sorted(self.best.state),
            "config": self.config.to_dict(),
        }
        return Snapshot(state, dict(self.best.state), {"seen_indices": result.seen_indices})

    def load_state_dict(self, checkpoint: Checkpoint) -> None:
        """Put back what the checkpoint's run had done, before its phase configures the model."""
        state, result = checkpoint.state, self.result
        result.history = [EpochLog(**h) for h in state["history"]]
        result.phases = [PhaseLog(**p) for p in state["phases"]]
        result.best_epoch, result.best_score = state["best_epoch"], state["best_score"]
        result.eval_phase, result.body_trained = state["eval_phase"], state["body_trained"]
        result.feature_extraction_seconds = state["feature_extraction_seconds"]
        result.feature_extraction_seconds_by_split = state.get("feature_extraction_seconds_by_split", {})
        result.seen_indices[:] = checkpoint.process_state.get("seen_indices", [])
        self.best.state = {name: checkpoint.tensors[name] for name in state["best_weights"]}
        # The phase may extract features from the body before accelerate loads its state.
        self.model.load_state_dict(checkpoint_weights(checkpoint.path), strict=False)


class Validation:
    """The end of an epoch in a fitting phase: validate, log, keep the best, decide on early stopping."""

    def __init__(self, run: PhaseRun, state: FitState) -> None:
        self.run, self.result, self.best = run, state.result, state.best
        self.phase_start = self.result.epochs_before_phase()

    def on_epoch_end(self, train_loss: float) -> bool:
        run, result, phase = self.run, self.result, self.run.phase
        # Derived, not remembered: a resumed run gets the same answer.
        phase_best = max(self.phase_start, result.best_epoch)
        epoch = len(result.history) + 1
        scores = self._scores() if phase.evaluate else {}
        result.history.append(EpochLog(epoch, phase.name, train_loss, scores))
        logger.info(
            "epoch %d (%s): train_loss=%.4f validation %s", epoch, phase.name, train_loss, _fmt(scores)
        )
        run.ctx.session.log(
            {"train/epoch_loss": train_loss, **{f"validation/{k}": v for k, v in scores.items()}}
        )
        if not phase.evaluate:
            return False
        metric = run.ctx.config.metric_for_best_model or run.model.task.best_metric
        if run.ctx.epoch_hook is not None:
            run.ctx.epoch_hook(epoch, scores[metric])
        if result.best_epoch == 0 or _improves(scores[metric], result.best_score, metric):
            result.best_epoch, result.best_score = epoch, scores[metric]
            result.eval_datasets, result.eval_phase = run.datasets, run.index
            self.best.update()
        elif phase.patience is not None and epoch - phase_best >= phase.patience:
            logger.info("early stopping: no %s gain for %d epochs", metric, phase.patience)
            return True
        return False

    def _scores(self) -> dict[str, float]:
        """Validation scores: of the validation split, or out-of-fold (--protocol cross-validation)."""
        run = self.run
        if "validation" in run.datasets:
            return evaluate_split(run.model, run.datasets["validation"], run.ctx, "validation")
        if run.out_of_fold is None:
            raise ConfigError(
                "This phase has no validation split to score on: --protocol cross-validation serves "
                "closed-form heads only. Use --protocol holdout."
            )
        self.result.out_of_fold = run.out_of_fold
        outputs, targets = run.out_of_fold
        task = run.model.task
        return run.ctx.metrics.compute(task.predictions(outputs), task.references(targets))


def _improves(score: float, best: float, metric: str) -> bool:
    return score > best if greater_is_better(metric) else score < best


def _phase_log(model: TransferModel, phase: Phase, groups: ParamGroups, epochs_run: int) -> PhaseLog:
    trained = [g.name for g in model.backbone.layer_groups() if any(p.requires_grad for _, p in g.parameters)]
    trained += [
        name
        for name in ("pooling", "head")
        if any(p.requires_grad for p in getattr(model, name).parameters())
    ]
    trainable, _ = count_parameters(model)
    rates = [g["lr"] for g in groups if "lr" in g]
    learning_rate = max(rates) if rates and not phase.closed_form else None
    return PhaseLog(
        phase.name, phase.loop, epochs_run, trainable, trained, learning_rate, phase.epochs, phase.patience
    )


def _fmt(scores: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in scores.items())


def distributed_report(
    accelerator: Accelerator, seen: list[int], num_train: int, model: torch.nn.Module | None = None
) -> dict[str, Any]:
    """Which training examples each process saw in the first epoch, and (several processes, given
    ``model``) whether every process ended with the very same weights, as data parallelism must."""
    per_rank = gather_object([sorted(set(seen))])
    sets = [set(s) for s in per_rank]
    overlap = len(set.intersection(*sets)) if len(sets) > 1 else 0
    replicas = {}
    if model is not None and is_sharded(model):
        replicas = {"parameters_sharded": True}  # one copy over all processes: nothing to compare
    elif model is not None and accelerator.num_processes > 1:
        fingerprints = gather_object([weights_fingerprint(model)])
        replicas = {"weights_identical_across_processes": len(set(fingerprints)) == 1}
    return {
        **replicas,
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "train_examples_per_process": [len(s) for s in sets],
        "examples_seen_by_several_processes": overlap,
        "train_examples_covered": len(set.union(*sets)),
        "num_train_examples": num_train,
    }
