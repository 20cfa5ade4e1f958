"""Metrics of every task type, computed in process: no hub needed.

``evaluate.load("accuracy")`` downloads a script from the Hugging Face Hub. The
common classification, multi-label and regression metrics are defined here
instead, with ``evaluate``'s calling convention. Any other name goes to ``evaluate.load``, which runs a
Python script (from a local folder or the Hub), so it needs the same opt-in as
model code: ``trust_remote_code``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    hamming_loss,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
    precision_score,
    r2_score,
    recall_score,
)

if TYPE_CHECKING:
    import evaluate

from nlptransfer.errors import UnknownNameError
from nlptransfer.registry import Registry, closest_hint


@dataclass(frozen=True)
class LocalMetric:
    """A metric computed in process by a scikit-learn or scipy function of (references, predictions).

    It has ``evaluate``'s calling convention (``compute(predictions=..., references=...)``) but
    takes any array shape: class ids, 0/1 label matrices (multi-label) or numbers (regression).
    """

    name: str
    fn: Callable[[np.ndarray, np.ndarray], float]
    description: str
    greater_is_better: bool = True

    def compute(self, predictions: Sequence[Any], references: Sequence[Any]) -> dict[str, float]:
        return {self.name: float(self.fn(np.asarray(references), np.asarray(predictions)))}


LOCAL_METRICS: Registry[LocalMetric] = Registry("metric")


def _local(name: str, fn: Callable[..., float], description: str, greater_is_better: bool = True) -> None:
    LOCAL_METRICS.register(name)(LocalMetric(name, fn, description, greater_is_better))


def _averaged(fn: Callable[..., float], average: str) -> Callable[[np.ndarray, np.ndarray], float]:
    return lambda refs, preds: fn(refs, preds, average=average, zero_division=0)


def _correlation(fn: Callable[..., Any]) -> Callable[[np.ndarray, np.ndarray], float]:
    """Mean over targets of a correlation; 0 where one side is constant (undefined, not a NaN that
    would never be 'best')."""

    def score(refs: np.ndarray, preds: np.ndarray) -> float:
        refs, preds = refs.reshape(len(refs), -1), preds.reshape(len(preds), -1)
        values = []
        for r, p in zip(refs.T, preds.T, strict=True):
            constant = np.ptp(r) == 0 or np.ptp(p) == 0
            values.append(0.0 if constant else float(fn(r, p)[0]))
        return float(np.mean(values))

    return score


_local("accuracy", accuracy_score, "Fraction of correct predictions (of exactly right label sets).")
_local("f1_macro", _averaged(f1_score, "macro"), "Unweighted mean of per-class (per-label) F1.")
_local("precision_macro", _averaged(precision_score, "macro"), "Unweighted mean of per-class precision.")
_local("recall_macro", _averaged(recall_score, "macro"), "Unweighted mean of per-class recall.")
_local("f1_micro", _averaged(f1_score, "micro"), "F1 over every (example, label) decision pooled.")
_local(
    "f1_samples",
    # An empty label set predicted as empty is a perfect answer (F1 1), not an undefined one.
    lambda refs, preds: f1_score(refs, preds, average="samples", zero_division=1),
    "Mean over examples of the F1 of their label set.",
)
_local("subset_accuracy", accuracy_score, "Fraction of examples whose whole label set is right.")
_local("hamming_loss", hamming_loss, "Fraction of (example, label) decisions that are wrong.", False)
_local("mse", mean_squared_error, "Mean squared error, in the targets' units (mean over targets).", False)
_local("mae", mean_absolute_error, "Mean absolute error, in the targets' units (mean over targets).", False)
_local("pearson", _correlation(pearsonr), "Pearson correlation (mean over targets).")
_local("spearman", _correlation(spearmanr), "Spearman rank correlation (mean over targets).")
_local("r2", r2_score, "Coefficient of determination (mean over targets).")


def greater_is_better(name: str) -> bool:
    """Whether a higher value of metric ``name`` is better (losses and errors: lower is)."""
    if name in LOCAL_METRICS:
        return LOCAL_METRICS.get(name).greater_is_better
    return not name.endswith(("loss", "error")) and name not in ("rmse", "mape")


DEFAULT_METRICS = ("accuracy", "f1_macro", "precision_macro", "recall_macro")


def load_metric(name: str, trust_remote_code: bool = False) -> LocalMetric | evaluate.EvaluationModule:
    """A built-in metric by name; any other name only with ``trust_remote_code`` (it runs code).

    ``evaluate.load`` imports and runs a Python script: from a local folder of that
    name (even a bare name, looked up in the working directory) or from the Hub.
    """
    if name in LOCAL_METRICS:
        return LOCAL_METRICS.get(name)
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
        import evaluate  # 2 s to import (it loads transformers' pipelines): only for metrics not built in

        return evaluate.load(name, keep_in_memory=True)
    except Exception as err:  # evaluate raises FileNotFoundError, ConnectionError, ImportError, ...
        raise UnknownNameError(
            f"Metric '{name}' is not built in (built in: {builtin}) and evaluate.load could not load "
            f"it from a local folder or the Hugging Face Hub: {err}" + hint
        ) from err


class MetricSet:
    """Several metrics, loaded once (so a bad name fails before training), computed together."""

    def __init__(self, names: Sequence[str] | None = None, trust_remote_code: bool = False) -> None:
        self.names = list(DEFAULT_METRICS if names is None else names)
        self.modules = [load_metric(name, trust_remote_code) for name in self.names]

    def compute(self, predictions: Sequence[Any], references: Sequence[Any]) -> dict[str, float]:
        results: dict[str, float] = {}
        for module in self.modules:
            if isinstance(module, LocalMetric):
                values = module.compute(predictions=predictions, references=references)
            else:
                values = module.compute(predictions=_as_list(predictions), references=_as_list(references))
            results.update({k: float(v) for k, v in (values or {}).items() if isinstance(v, int | float)})
        return results


def _as_list(values: Sequence[Any]) -> Any:
    # evaluate modules take lists (a label matrix as a list of rows).
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def compute_metrics(
    predictions: Sequence[Any],
    references: Sequence[Any],
    names: Sequence[str] = DEFAULT_METRICS,
    trust_remote_code: bool = False,
) -> dict[str, float]:
    """Compute every named metric; results are flattened into one dict."""
    return MetricSet(names, trust_remote_code).compute(predictions, references)


def per_label_table(
    problem_type: str, predictions: np.ndarray, references: np.ndarray, names: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Per class (single-label), per label (multi-label) or per target (regression): how each did."""
    if problem_type == "regression":
        preds, refs = predictions.reshape(len(predictions), -1), references.reshape(len(references), -1)
        return {
            name: {
                metric: LOCAL_METRICS.get(metric).compute(preds[:, j], refs[:, j])[metric]
                for metric in ("mse", "mae", "pearson", "spearman", "r2")
            }
            for j, name in enumerate(names)
        }
    labels = list(range(len(names))) if np.ndim(references) == 1 else None
    precision, recall, f1, support = precision_recall_fscore_support(
        references, predictions, labels=labels, zero_division=0
    )
    return {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
        for name, p, r, f, n in zip(names, precision, recall, f1, support, strict=True)
    }
