"""Classification objectives: a task's loss over minibatches, or logistic regression in closed form."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from nlptransfer.data import Collator, EncodedDataset, EpochSampler, FeatureDataset, LengthGroupedSampler
from nlptransfer.engine.objectives.base import OBJECTIVES, Objective
from nlptransfer.errors import ConfigError
from nlptransfer.model.heads import (
    fit_logistic_head,
    fit_one_vs_rest_head,
    fit_ridge_head,
    out_of_fold_logits,
    out_of_fold_values,
)
from nlptransfer.tasks.base import MultiLabelClassification, Regression

if TYPE_CHECKING:
    from nlptransfer.backbones import Backbone
    from nlptransfer.engine.fit import PhaseRun
    from nlptransfer.tasks.base import Task


def train_loader(
    dataset: Dataset, backbone: Backbone, batch_size: int, seed: int
) -> tuple[DataLoader, EpochSampler]:
    """A loader whose order depends only on (seed, epoch), and the sampler to set the epoch on."""
    # The loader's own generator: iterating it must not draw from the global RNG,
    # or a resumed run's dropout masks would differ from an uninterrupted one's.
    generator = torch.Generator().manual_seed(seed)
    if not isinstance(dataset, EncodedDataset):  # fixed-size features: nothing to pad
        sampler = EpochSampler(len(dataset), seed)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=generator), sampler
    if backbone.variable_length:
        sampler = LengthGroupedSampler(dataset.lengths(), batch_size, seed)
    else:  # images: every example has the same size
        sampler = EpochSampler(len(dataset), seed)
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, collate_fn=Collator(backbone), generator=generator
    )
    return loader, sampler


@OBJECTIVES.register("gradient")
class Classification(Objective):
    """The task's loss (cross-entropy for single labels), batch by batch, on tokens or body features.

    ``seen`` (when given) collects the example indices this process trains on in the first
    epoch: results.json reports how the processes shared the data.
    """

    reads_activations = True

    def __init__(
        self, train: Dataset, backbone: Backbone, task: Task, batch_size: int, seed: int,
        seen: list[int] | None = None,
    ) -> None:  # fmt: skip
        self.train, self.backbone, self.task = train, backbone, task
        self.batch_size, self.seed = batch_size, seed
        self.seen = seen
        self.epoch = 1
        self.sampler: EpochSampler | None = None

    @classmethod
    def from_phase(cls, run: PhaseRun) -> Classification:
        config = run.ctx.config
        model, seed = run.model, config.seed + run.index
        return cls(run.datasets["train"], model.backbone, model.task, config.batch_size, seed, run.seen)

    def loader(self) -> DataLoader:
        loader, self.sampler = train_loader(self.train, self.backbone, self.batch_size, self.seed)
        return loader

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    @property
    def draws_global_seed(self) -> bool:
        return getattr(self.sampler, "draws_global_seed", False)

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        labels = batch.pop("labels")
        del batch["idx"]  # read on the host by the loop (observe)
        return self.task.loss(model(**batch), labels)


@OBJECTIVES.register("ridge-cv")
@OBJECTIVES.register("logistic-cv")
class ClosedFormHead(Objective):
    """The head fitted by scikit-learn on frozen features, by the model's task: logistic regression
    (one-vs-rest for label sets, weighted as the task weighs classes) or ridge regression, the
    regularisation chosen by cross-validation."""

    closed_form = True

    def __init__(self, train: Dataset, seed: int, run: PhaseRun | None = None) -> None:
        if not isinstance(train, FeatureDataset):
            raise ConfigError(
                "A closed-form head (logistic-cv, ridge-cv) fits on frozen features; "
                "this phase trains the body."
            )
        self.train, self.seed = train, seed
        # Set under --protocol cross-validation (no validation split): receives the out-of-fold outputs.
        self.run = run

    @classmethod
    def from_phase(cls, run: PhaseRun) -> ClosedFormHead:
        cross_validate = "validation" not in run.datasets
        return cls(run.datasets["train"], run.ctx.config.seed, run if cross_validate else None)

    def solve(self, model: torch.nn.Module) -> float:
        with torch.no_grad():
            features = torch.from_numpy(np.array(self.train.features, dtype=np.float32))
            features = model.pooling.combine(features).numpy()
        task, targets = model.task, self.train.labels
        if isinstance(task, Regression):
            goal = task.standardise(targets.float()).numpy()
            loss = fit_ridge_head(model.head, features, goal)
            if self.run is not None:
                self._keep(out_of_fold_values(features, goal, model.head, self.seed))
            return loss
        if isinstance(task, MultiLabelClassification):
            return fit_one_vs_rest_head(model.head, features, targets.numpy(), self.seed, task.pos_weight)
        loss = fit_logistic_head(model.head, features, targets.numpy(), self.seed, task.class_weights)
        if self.run is not None:
            self._keep(
                out_of_fold_logits(features, targets.numpy(), model.head, self.seed, task.class_weights)
            )
        return loss

    def _keep(self, outputs: np.ndarray) -> None:
        assert self.run is not None
        self.run.out_of_fold = (torch.as_tensor(outputs), self.train.labels)
