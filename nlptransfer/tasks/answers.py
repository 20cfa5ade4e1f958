"""What ``predict`` answers, from the scores a model's output activation gives; numpy only.

``TransferModel.predict`` and the ONNX runtime (which runs without torch) both answer through
these: the same labels, label sets, values and "unsure" either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from nlptransfer.errors import ConfigError

SINGLE_LABEL = "single_label_classification"
MULTI_LABEL = "multi_label_classification"
REGRESSION = "regression"
# The answer of --abstain_threshold below the threshold.
UNSURE = "unsure"


@dataclass
class Predictions:
    """The answers for each input, and the scores behind them.

    ``labels``: one label per input (single-label), a list of labels (multi-label; maybe empty),
    or the predicted value (regression; a dict of target name -> value with several targets).
    ``probabilities``: (inputs, outputs) class or label probabilities, or the predicted values.
    """

    labels: list[Any]
    probabilities: np.ndarray
    label_names: list[str]
    problem_type: str = SINGLE_LABEL

    @property
    def scores(self) -> np.ndarray:
        """The probability of the predicted class; for label sets and values, the scores themselves."""
        if self.problem_type == SINGLE_LABEL:
            return self.probabilities.max(axis=1)
        return self.probabilities

    def columns(self, separator: str = ";") -> dict[str, list[Any]]:
        """The predictions as table columns: the answer (a label set joined by ``separator``; a
        value per target), the predicted class's score, then each class's or label's probability."""
        if self.problem_type == "regression":
            if len(self.label_names) == 1:
                return {"prediction": self.probabilities[:, 0].tolist()}
            return {
                f"prediction_{n}": self.probabilities[:, i].tolist() for i, n in enumerate(self.label_names)
            }
        answers = self.labels
        columns: dict[str, list[Any]] = {}
        if self.problem_type == SINGLE_LABEL:
            columns = {"prediction": answers, "score": self.scores.tolist()}
        else:
            columns = {"prediction": [separator.join(map(str, labels)) for labels in answers]}
        for i, name in enumerate(self.label_names):
            columns[f"prob_{name}"] = self.probabilities[:, i].tolist()
        return columns

    def to_records(self) -> list[dict[str, Any]]:
        records = []
        for answer, row in zip(self.labels, self.probabilities, strict=True):
            named = dict(zip(self.label_names, map(float, row), strict=True))
            if self.problem_type == "regression":
                records.append({"value": answer})
            elif self.problem_type == SINGLE_LABEL:
                records.append({"label": answer, "score": float(row.max()), "probabilities": named})
            else:
                records.append({"labels": answer, "probabilities": named})
        return records

    def abstain(self, threshold: float | None) -> Predictions:
        """The same predictions, answering :data:`UNSURE` where the predicted class's probability is
        below ``threshold`` (single-label classification; None keeps every answer)."""
        if threshold is None:
            return self
        if self.problem_type != SINGLE_LABEL:
            raise ConfigError(
                f"--abstain_threshold answers '{UNSURE}' below a class probability: it serves single-label "
                f"classification, and this model is {self.problem_type}. Drop --abstain_threshold."
            )
        check_abstain_threshold(threshold)
        scores = self.scores
        answers = [UNSURE if s < threshold else label for label, s in zip(self.labels, scores, strict=True)]
        return replace(self, labels=answers)


def check_abstain_threshold(threshold: float) -> None:
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(
            f"--abstain_threshold must be a probability in (0, 1], got {threshold}: the answer is "
            f"'{UNSURE}' when the predicted class's probability is below it."
        )


def _single_label(scores: np.ndarray, labels: Sequence[str], **_: Any) -> list[Any]:
    return [labels[i] for i in scores.argmax(1)]


def _multi_label(scores: np.ndarray, labels: Sequence[str], thresholds: Any = None, **_: Any) -> list[Any]:
    cut = np.full(scores.shape[1], 0.5) if thresholds is None else np.asarray(thresholds)
    return [[labels[j] for j in np.flatnonzero(row)] for row in scores >= cut]


def _values(scores: np.ndarray, labels: Sequence[str], **_: Any) -> list[Any]:
    if scores.shape[1] == 1:
        return [float(v) for v in scores[:, 0]]
    return [dict(zip(labels, map(float, row), strict=True)) for row in scores]


_DECODERS = {SINGLE_LABEL: _single_label, MULTI_LABEL: _multi_label, REGRESSION: _values}


def decode(problem_type: str, scores: np.ndarray, labels: Sequence[str], **state: Any) -> list[Any]:
    """The answer for each row of activated ``scores``: the most probable label, the labels at or
    above their thresholds (``state["thresholds"]``, else 0.5), or the values."""
    return _DECODERS[problem_type](scores, labels, **state)
