"""The task a run trains, chosen for its data: problem type, class weights, metrics, the head.

Options a user leaves unset get the value that fits the task and the data, and the choice is
written down with its reason (results.json's ``task``); an option that cannot serve the task
stops the run before anything trains.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from nlptransfer.config import FinetuneConfig
from nlptransfer.data import LabelledData
from nlptransfer.errors import ConfigError
from nlptransfer.tasks.base import (
    MultiLabelClassification,
    Regression,
    SingleLabelClassification,
    Task,
)
from nlptransfer.tasks.metrics import LOCAL_METRICS

logger = logging.getLogger(__name__)

# auto class weights: balanced when the largest class has at least this many times the examples
# of the smallest one.
IMBALANCE_RATIO = 3.0
# A label's positives weigh at most this much in a balanced multi-label loss.
MAX_POS_WEIGHT = 100.0


def configure_task(config: FinetuneConfig, data: LabelledData) -> tuple[FinetuneConfig, Task, dict[str, Any]]:
    """The config with task-dependent defaults filled in, the task (fitted to the training targets),
    and what was chosen and why."""
    kind = data.problem_type
    weighting, rule = _class_weighting(config.class_weight, kind, data.report.get("targets", {}))
    task = _build(kind, data, weighting, config.regression_loss)
    _check_options(config, task)
    metrics = list(config.metrics or task.metrics)
    imbalanced = weighting == "balanced" and kind == SingleLabelClassification.name
    best = config.metric_for_best_model or ("f1_macro" if imbalanced else task.best_metric)
    if best not in metrics:
        metrics.append(best)
    _check_metrics(metrics, task)
    resolved = dataclasses.replace(config, metrics=metrics, metric_for_best_model=best, problem_type=kind)
    notes = {
        "problem_type": kind,
        "problem_type_reason": data.report.get("problem_type_reason", ""),
        "class_weight": weighting,
        "class_weight_rule": rule,
        "metric_for_best_model": best,
    }
    logger.info("task: %s; class weights %s (%s); best epoch by %s", kind, weighting, rule, best)
    return resolved, task, notes


def _class_weighting(option: str, kind: str, targets: dict[str, Any]) -> tuple[str, str]:
    if kind == Regression.name:
        if option == "balanced":
            raise ConfigError("--class_weight balanced weighs classes; a regression has none. Drop it.")
        return "none", "regression has no classes"
    if option != "auto":
        return option, f"--class_weight {option}"
    if kind == MultiLabelClassification.name:
        return "none", "auto: multi-label decisions are balanced by per-label thresholds tuned on validation"
    ratio = targets.get("imbalance_ratio", 1.0)
    chosen = "balanced" if ratio >= IMBALANCE_RATIO else "none"
    sign = ">=" if chosen == "balanced" else "<"
    return chosen, f"auto: largest class / smallest = {ratio:.1f} ({sign} {IMBALANCE_RATIO:g})"


def _build(kind: str, data: LabelledData, weighting: str, loss: str) -> Task:
    labels = data.train.labels
    if kind == Regression.name:
        values = np.asarray(labels, dtype=np.float64)
        return Regression(values.mean(0).tolist(), values.std(0).tolist(), loss)
    if kind == MultiLabelClassification.name:
        pos_weight = None
        if weighting == "balanced":
            positives = np.asarray(labels).sum(0)
            negatives = len(labels) - positives
            pos_weight = np.clip(negatives / np.maximum(positives, 1), 1.0, MAX_POS_WEIGHT).tolist()
        return MultiLabelClassification(pos_weight=pos_weight)
    weights = None
    if weighting == "balanced":  # scikit-learn's "balanced": n / (classes x count)
        counts = np.bincount(np.asarray(labels), minlength=len(data.label_names))
        weights = (len(labels) / (len(counts) * np.maximum(counts, 1))).tolist()
    return SingleLabelClassification(weights)


def _check_options(config: FinetuneConfig, task: Task) -> None:
    """Options that cannot serve this task stop the run with the option to use instead."""
    closed = {"logistic-cv", "ridge-cv"}
    if config.head in closed and config.head != task.closed_form_head:
        raise ConfigError(
            f"--head {config.head} cannot fit a {task.name} head; use --head {task.closed_form_head} "
            "(or linear)."
        )
    if config.strategy == "contrastive" and isinstance(task, Regression):
        raise ConfigError(
            "--strategy contrastive pairs examples by their labels; a regression has none. Use "
            "feature-extraction, finetune, lp-ft or an adapter strategy."
        )


def _check_metrics(metrics: list[str], task: Task) -> None:
    wrong = [m for m in metrics if m in LOCAL_METRICS and m not in task.valid_metrics]
    if wrong:
        raise ConfigError(
            f"--metrics {wrong} cannot score a {task.name} task; its metrics are "
            f"{', '.join(task.valid_metrics)}."
        )
