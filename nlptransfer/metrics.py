"""Classification metrics as ``evaluate`` modules that need no hub.

``evaluate.load("accuracy")`` downloads a script from the Hugging Face Hub. The
common classification metrics are defined here as local ``evaluate.Metric``
subclasses instead; any other name goes to ``evaluate.load`` so hub metrics
still work where the hub is reachable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import evaluate
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from nlptransfer.errors import UnknownNameError
from nlptransfer.registry import Registry, closest_hint

LOCAL_METRICS: Registry[type[evaluate.Metric]] = Registry("metric")

_FEATURES = datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")})


class _SklearnMetric(evaluate.Metric):
    """An ``evaluate.Metric`` computed by a scikit-learn scoring function."""

    key: str = ""
    description: str = ""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=self.description,
            citation="",
            inputs_description="predictions and references: integer class ids",
            features=_FEATURES,
        )

    def _score(self, references: Sequence[int], predictions: Sequence[int]) -> float:
        raise NotImplementedError

    def _compute(self, predictions: Sequence[int], references: Sequence[int]) -> dict[str, float]:
        return {self.key: float(self._score(references, predictions))}


@LOCAL_METRICS.register("accuracy")
class Accuracy(_SklearnMetric):
    key, description = "accuracy", "Fraction of correct predictions."

    def _score(self, references: Sequence[int], predictions: Sequence[int]) -> float:
        return accuracy_score(references, predictions)


def _macro(fn: Any) -> Any:
    return lambda refs, preds: fn(refs, preds, average="macro", zero_division=0)


@LOCAL_METRICS.register("f1_macro")
class F1Macro(_SklearnMetric):
    key, description = "f1_macro", "Unweighted mean of per-class F1."
    _score = staticmethod(_macro(f1_score))


@LOCAL_METRICS.register("precision_macro")
class PrecisionMacro(_SklearnMetric):
    key, description = "precision_macro", "Unweighted mean of per-class precision."
    _score = staticmethod(_macro(precision_score))


@LOCAL_METRICS.register("recall_macro")
class RecallMacro(_SklearnMetric):
    key, description = "recall_macro", "Unweighted mean of per-class recall."
    _score = staticmethod(_macro(recall_score))


DEFAULT_METRICS = ("accuracy", "f1_macro", "precision_macro", "recall_macro")


def load_metric(name: str) -> evaluate.EvaluationModule:
    """A local metric by name, else ``evaluate.load(name)`` (needs the hub)."""
    if name in LOCAL_METRICS:
        return LOCAL_METRICS.get(name)(keep_in_memory=True)
    try:
        return evaluate.load(name, keep_in_memory=True)
    except Exception as err:  # evaluate raises FileNotFoundError, ConnectionError, ...
        raise UnknownNameError(
            f"Metric '{name}' is not built in (built in: {', '.join(LOCAL_METRICS.names())}) "
            f"and evaluate.load could not fetch it from the Hugging Face Hub: {err}"
            + closest_hint(name, LOCAL_METRICS.names())
        ) from err


class MetricSet:
    """Several metrics, loaded once (so a bad name fails before training), computed together."""

    def __init__(self, names: Sequence[str] = DEFAULT_METRICS) -> None:
        self.modules = [load_metric(name) for name in names]

    def compute(self, predictions: Sequence[int], references: Sequence[int]) -> dict[str, float]:
        results: dict[str, float] = {}
        for module in self.modules:
            values = module.compute(predictions=list(predictions), references=list(references))
            results.update({k: float(v) for k, v in (values or {}).items() if isinstance(v, int | float)})
        return results


def compute_metrics(
    predictions: Sequence[int], references: Sequence[int], names: Sequence[str] = DEFAULT_METRICS
) -> dict[str, float]:
    """Compute every named metric; results are flattened into one dict."""
    return MetricSet(names).compute(predictions, references)
