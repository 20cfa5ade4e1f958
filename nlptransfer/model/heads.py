"""Classification heads on pooled features."""

from __future__ import annotations

import inspect
import logging
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from nlptransfer.errors import ModelLoadError
from nlptransfer.registry import Registry

logger = logging.getLogger(__name__)

HEADS: Registry[type[nn.Module]] = Registry("head")


@HEADS.register("linear")
class LinearHead(nn.Module):
    """Dropout + one linear layer: the classic new classifier on a pretrained body."""

    def __init__(self, in_features: int, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.in_features = in_features
        self.num_labels = num_labels
        self.dropout_p = dropout
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_features, num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(features))

    def get_config(self) -> dict[str, Any]:
        return {
            "type": "linear",
            "in_features": self.in_features,
            "num_labels": self.num_labels,
            "dropout": self.dropout_p,
        }


def build_head(config: dict[str, Any]) -> nn.Module:
    """Rebuild a head from its saved config (a registry name plus its arguments).

    Arguments this version does not know (a config saved by a newer one) are
    dropped with a warning, so such a model still loads.
    """
    head_cls = HEADS.get(config["type"])
    accepted = inspect.signature(head_cls).parameters
    unknown = sorted(set(config) - {"type"} - set(accepted))
    if unknown:
        logger.warning("Ignoring unknown head options %s (saved by a newer version?)", unknown)
    kwargs = {k: v for k, v in config.items() if k in accepted}
    try:
        return head_cls(**kwargs)
    except TypeError as err:  # a required argument is missing
        raise ModelLoadError(f"The saved head config {config} cannot build a head: {err}.") from err


def fit_logistic_head(head: LinearHead, features: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """Fit ``head`` as a logistic regression, its regularisation chosen by cross-validation.

    scikit-learn does the fitting; the coefficients are copied into the linear
    layer, so the saved model is the usual safetensors file (no pickle) and
    predicts exactly like the fitted estimator. Returns the training log-loss.
    """
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.metrics import log_loss

    folds = int(min(5, np.unique(labels, return_counts=True)[1].min()))
    if folds >= 2:
        estimator = LogisticRegressionCV(
            Cs=10, cv=folds, scoring="neg_log_loss", max_iter=2000, random_state=seed
        )
    else:
        logger.warning("Some label has a single training example: no cross-validation, C=1.")
        estimator = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)  # sklearn API notices, not user issues
        estimator.fit(features, labels)
    weight, bias = _as_softmax_layer(
        estimator.coef_, estimator.intercept_, estimator.classes_, head.num_labels
    )
    with torch.no_grad():
        head.linear.weight.copy_(torch.as_tensor(weight))
        head.linear.bias.copy_(torch.as_tensor(bias))
    if hasattr(estimator, "C_"):
        logger.info(
            "logistic-cv: C=%s chosen by %d-fold cross-validation", float(np.ravel(estimator.C_)[0]), folds
        )
    return float(log_loss(labels, estimator.predict_proba(features), labels=estimator.classes_))


def _as_softmax_layer(
    coef: np.ndarray, intercept: np.ndarray, classes: np.ndarray, num_labels: int
) -> tuple[np.ndarray, np.ndarray]:
    """A (num_labels, features) layer whose softmax equals the estimator's probabilities.

    Binary logistic regression has one row w: softmax([-w/2, w/2]) = sigmoid(w).
    Labels never seen in training get a very negative bias.
    """
    if coef.shape[0] == 1:
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    weight = np.zeros((num_labels, coef.shape[1]), dtype=np.float32)
    bias = np.full(num_labels, -1e4, dtype=np.float32)
    weight[classes] = coef
    bias[classes] = intercept
    return weight, bias
