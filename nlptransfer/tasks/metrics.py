"""Classification metrics as ``evaluate`` modules that need no hub.

``evaluate.load("accuracy")`` downloads a script from the Hugging Face Hub. The
common classification metrics are defined here as local ``evaluate.Metric``
subclasses instead. Any other name goes to ``evaluate.load``, which runs a
Python script (from a local folder or the Hub), so it needs the same opt-in as
model code: ``trust_remote_code``.
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


def load_metric(name: str, trust_remote_code: bool = False) -> evaluate.EvaluationModule:
    """A built-in metric by name; any other name only with ``trust_remote_code`` (it runs code).

    ``evaluate.load`` imports and runs a Python script: from a local folder of that
    name (even a bare name, looked up in the working directory) or from the Hub.
    """
    if name in LOCAL_METRICS:
        return LOCAL_METRICS.get(name)(keep_in_memory=True)
    return _load_external_metric(name, trust_remote_code)


def _load_external_metric(name: str, trust_remote_code: bool) -> evaluate.EvaluationModule:
    builtin, hint = ", ".join(LOCAL_METRICS.names()), closest_hint(name, LOCAL_METRICS.names())
    if not trust_remote_code:
        raise UnknownNameError(
            f"Metric '{name}' is not built in (built in: {builtin}). Any other name is loaded by "
            "evaluate.load, which runs a Python script from a local folder of that name or from the "
            "Hugging Face Hub. Pick a built-in metric, or read that script and pass --trust_remote_code "
            "to run it." + hint
        )
    try:
        return evaluate.load(name, keep_in_memory=True)
    except Exception as err:  # evaluate raises FileNotFoundError, ConnectionError, ImportError, ...
        raise UnknownNameError(
            f"Metric '{name}' is not built in (built in: {builtin}) and evaluate.load could not load "
            f"it from a local folder or the Hugging Face Hub: {err}" + hint
        ) from err


class MetricSet:
    """Several metrics, loaded once (so a bad name fails before training), computed together."""

    def __init__(self, names: Sequence[str] = DEFAULT_METRICS, trust_remote_code: bool = False) -> None:
        self.modules = [load_metric(name, trust_remote_code) for name in names]

    def compute(self, predictions: Sequence[int], references: Sequence[int]) -> dict[str, float]:
        results: dict[str, float] = {}
        for module in self.modules:
            values = module.compute(predictions=list(predictions), references=list(references))
            results.update({k: float(v) for k, v in (values or {}).items() if isinstance(v, int | float)})
        return results


def compute_metrics(
    predictions: Sequence[int],
    references: Sequence[int],
    names: Sequence[str] = DEFAULT_METRICS,
    trust_remote_code: bool = False,
) -> dict[str, float]:
    """Compute every named metric; results are flattened into one dict."""
    return MetricSet(names, trust_remote_code).compute(predictions, references)
