"""The Task contract: what a model predicts, the loss it trains with, and how its outputs are read.

A new kind of target (label sets, numbers) is a new registered Task, not a branch in the model,
the objectives or the evaluation: they ask the model's task for the loss, the activation of its
outputs, the predictions metrics compare, and the answers ``predict`` returns.

A task may hold state learnt from the training targets (class weights, the targets' mean and
spread) or tuned on validation (decision thresholds); ``get_config`` saves it with the model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from nlptransfer.errors import ModelLoadError
from nlptransfer.registry import Registry
from nlptransfer.tasks.answers import MULTI_LABEL, REGRESSION, SINGLE_LABEL, decode
from nlptransfer.tasks.calibration import MIN_EXAMPLES, calibration_report, fit_temperature

logger = logging.getLogger(__name__)


class Task:
    """One kind of target. Subclasses set the class attributes and implement the methods."""

    # The registry name saved in a model's config (transformers' ``config.problem_type``).
    name: ClassVar[str]
    # Metrics reported by default, the one that picks the best epoch, and the built-in metrics
    # that can score this task at all.
    metrics: ClassVar[tuple[str, ...]]
    best_metric: ClassVar[str]
    valid_metrics: ClassVar[tuple[str, ...]]
    # The --head that fits in closed form on frozen features.
    closed_form_head: ClassVar[str] = "logistic-cv"
    # Whether ``tune`` fits decisions on the validation outputs after training.
    tunes: ClassVar[bool] = False

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch of the head's outputs (logits) against its targets."""
        raise NotImplementedError

    def activate(self, outputs: torch.Tensor) -> torch.Tensor:
        """The head's outputs as the scores ``predict`` reports (probabilities, or values)."""
        raise NotImplementedError

    def decode(self, scores: np.ndarray, labels: Sequence[str]) -> list[Any]:
        """The answer for each example, from its activated scores (``tasks.answers``, shared with
        the ONNX runtime, which reads the task's saved config instead of this object)."""
        return decode(self.name, scores, labels, **self.get_config())

    def predictions(self, outputs: torch.Tensor) -> np.ndarray:
        """What the metrics compare with the references, one row per example."""
        raise NotImplementedError

    def references(self, targets: Any) -> np.ndarray:
        """The targets of a split as the metrics read them."""
        return np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets)

    def tune(self, outputs: torch.Tensor, targets: Any) -> dict[str, Any] | None:
        """Fit decisions on validation outputs after training (thresholds); what was tuned, or None."""
        return None

    def calibrate(self, outputs: torch.Tensor, targets: Any) -> dict[str, Any] | None:
        """Fit the probabilities' calibration on held-out outputs; what was fitted, or None when the
        task has no probabilities to calibrate."""
        return None

    def calibration(self, outputs: torch.Tensor, targets: Any, split: str) -> dict[str, Any] | None:
        """How calibrated the probabilities of ``split`` are, before and after :meth:`calibrate`."""
        return None

    def get_config(self) -> dict[str, Any]:
        """The registry name and the task's state, as saved in ``transfer_config.json``."""
        return {"type": self.name}


TASKS: Registry[type[Task]] = Registry("task")


def _weights(values: float | list[float] | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if values is None else torch.as_tensor(values, dtype=like.dtype, device=like.device)


class TemperatureScaled(Task):
    """A classification task whose probabilities are calibrated by temperature scaling: the logits
    are divided by ``temperature`` (one number, or one per label for sigmoids) before the activation.
    None until fitted on held-out outputs (:meth:`calibrate`), and for models saved before it."""

    multi_label: ClassVar[bool] = False
    temperature: float | list[float] | None = None

    def scaled(self, outputs: torch.Tensor) -> torch.Tensor:
        values = outputs.float()
        temperature = _weights(self.temperature, values)
        return values if temperature is None else values / temperature

    def calibrate(self, outputs: torch.Tensor, targets: Any) -> dict[str, Any] | None:
        logits = outputs.float().cpu().numpy()
        fitted = fit_temperature(logits, self.references(targets), self.multi_label)
        if fitted is None:
            reason = f"fewer than {MIN_EXAMPLES} held-out examples, or every one right with a margin"
            return {"method": "none", "reason": reason}
        self.temperature = fitted
        return {"method": "temperature", "temperature": fitted}

    def calibration(self, outputs: torch.Tensor, targets: Any, split: str) -> dict[str, Any] | None:
        logits = outputs.float().cpu().numpy()
        return calibration_report(logits, self.references(targets), self.temperature, self.multi_label, split)


@TASKS.register("single_label_classification")
class SingleLabelClassification(TemperatureScaled):
    """One label per example, out of two or more: cross-entropy, softmax, the most probable label.

    ``class_weights`` (one per label, e.g. balanced) weigh the loss of rare classes up.
    """

    name = SINGLE_LABEL
    metrics = ("accuracy", "f1_macro", "precision_macro", "recall_macro")
    best_metric = "accuracy"
    valid_metrics = (*metrics, "f1_micro")

    def __init__(self, class_weights: list[float] | None = None, temperature: float | None = None) -> None:
        self.class_weights = class_weights
        self.temperature = temperature

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets, weight=_weights(self.class_weights, outputs))

    def activate(self, outputs: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.scaled(outputs), dim=-1)

    def predictions(self, outputs: torch.Tensor) -> np.ndarray:
        return outputs.argmax(-1).cpu().numpy()

    def get_config(self) -> dict[str, Any]:
        return {"type": self.name, "class_weights": self.class_weights, "temperature": self.temperature}


@TASKS.register("multi_label_classification")
class MultiLabelClassification(TemperatureScaled):
    """Any number of labels per example (none included): one sigmoid and one threshold per label.

    ``pos_weight`` weighs each label's positives in the binary cross-entropy; ``thresholds``
    (0.5 until tuned on validation) decide which labels apply.
    """

    name = MULTI_LABEL
    multi_label = True
    metrics = ("f1_micro", "f1_macro", "f1_samples", "subset_accuracy", "hamming_loss")
    best_metric = "f1_micro"
    tunes = True
    valid_metrics = (*metrics, "accuracy", "precision_macro", "recall_macro")
    # A label's threshold is tuned only with this many positive validation examples: fewer
    # would fit noise.
    min_positives_to_tune = 3

    def __init__(
        self,
        thresholds: list[float] | None = None,
        pos_weight: list[float] | None = None,
        temperature: list[float] | None = None,
    ) -> None:
        self.thresholds = thresholds
        self.pos_weight = pos_weight
        self.temperature = temperature

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = _weights(self.pos_weight, outputs)
        return F.binary_cross_entropy_with_logits(outputs, targets.to(outputs.dtype), pos_weight=weight)

    def activate(self, outputs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.scaled(outputs))

    def _thresholds(self, width: int) -> np.ndarray:
        return np.full(width, 0.5) if self.thresholds is None else np.asarray(self.thresholds)

    def predictions(self, outputs: torch.Tensor) -> np.ndarray:
        scores = self.activate(outputs).cpu().numpy()
        return (scores >= self._thresholds(scores.shape[1])).astype(np.int64)

    def references(self, targets: Any) -> np.ndarray:
        return super().references(targets).astype(np.int64)

    def tune(self, outputs: torch.Tensor, targets: Any) -> dict[str, Any] | None:
        """Each label's threshold: the one of the best F1 on validation (0.5 with too few positives)."""
        scores, truth = self.activate(outputs).cpu().numpy(), self.references(targets).astype(bool)
        grid = np.round(np.arange(0.05, 0.96, 0.05), 2)
        thresholds = []
        for j in range(scores.shape[1]):
            if truth[:, j].sum() < self.min_positives_to_tune:
                thresholds.append(0.5)
                continue
            f1 = [_binary_f1(scores[:, j] >= t, truth[:, j]) for t in grid]
            thresholds.append(float(grid[int(np.argmax(f1))]))
        self.thresholds = thresholds
        return {"thresholds": thresholds, "min_positives_to_tune": self.min_positives_to_tune}

    def get_config(self) -> dict[str, Any]:
        return {
            "type": self.name,
            "thresholds": self.thresholds,
            "pos_weight": self.pos_weight,
            "temperature": self.temperature,
        }


def _binary_f1(predicted: np.ndarray, truth: np.ndarray) -> float:
    hits = float((predicted & truth).sum())
    return 2 * hits / max(float(predicted.sum() + truth.sum()), 1.0)


@TASKS.register("regression")
class Regression(Task):
    """One or several numbers per example. The head predicts standardised targets (mean 0, spread
    1 on the training data), so one learning rate suits any units; answers are in the original units.
    """

    name = REGRESSION
    metrics = ("mse", "mae", "pearson", "spearman", "r2")
    best_metric = "spearman"
    valid_metrics = metrics
    closed_form_head = "ridge-cv"

    def __init__(
        self, mean: list[float] | None = None, std: list[float] | None = None, loss: str = "mse"
    ) -> None:
        self.mean, self.std, self.loss_name = mean, std, loss
        if loss not in ("mse", "huber"):
            raise ModelLoadError(f"Unknown regression loss '{loss}'; expected mse or huber.")

    def standardise(self, targets: torch.Tensor) -> torch.Tensor:
        mean, std = _weights(self.mean, targets), _weights(self.std, targets)
        return targets if mean is None or std is None else (targets - mean) / std

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        goal = self.standardise(targets.to(outputs.dtype).reshape(outputs.shape))
        return F.huber_loss(outputs, goal) if self.loss_name == "huber" else F.mse_loss(outputs, goal)

    def activate(self, outputs: torch.Tensor) -> torch.Tensor:
        values = outputs.float()
        mean, std = _weights(self.mean, values), _weights(self.std, values)
        return values if mean is None or std is None else values * std + mean

    def predictions(self, outputs: torch.Tensor) -> np.ndarray:
        return self.activate(outputs).cpu().numpy()

    def references(self, targets: Any) -> np.ndarray:
        return super().references(targets).astype(np.float64)

    def get_config(self) -> dict[str, Any]:
        return {"type": self.name, "mean": self.mean, "std": self.std, "loss": self.loss_name}


DEFAULT_TASK = SingleLabelClassification.name


def build_task(config: str | dict[str, Any] = DEFAULT_TASK) -> Task:
    """A task from its name, or from the config a model saved (its name and state)."""
    if isinstance(config, str):
        return TASKS.get(config)()
    options = {k: v for k, v in config.items() if k != "type"}
    try:
        return TASKS.get(config["type"])(**options)
    except TypeError as err:
        raise ModelLoadError(f"The saved task config {config} cannot build a task: {err}.") from err
