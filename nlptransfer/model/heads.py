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


def _class_weight(weights: list[float] | None) -> dict[int, float] | None:
    return None if weights is None else dict(enumerate(weights))


def _copy_layer(head: LinearHead, weight: np.ndarray, bias: np.ndarray) -> None:
    with torch.no_grad():
        head.linear.weight.copy_(torch.as_tensor(weight, dtype=head.linear.weight.dtype))
        head.linear.bias.copy_(torch.as_tensor(bias, dtype=head.linear.bias.dtype))


def _logistic(labels: np.ndarray, seed: int, class_weight: dict[int, float] | None) -> Any:
    """Logistic regression, its C chosen by up to 5-fold cross-validation (C=1 when a class is a
    single example)."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    folds = int(min(5, np.unique(labels, return_counts=True)[1].min()))
    if folds >= 2:
        return LogisticRegressionCV(
            n_jobs=_jobs(len(labels)),
            Cs=10,
            cv=folds,
            scoring="neg_log_loss",
            max_iter=2000,
            # lbfgs to 1e-3 rather than 1e-4: the same C and the same test accuracy on the movie
            # reviews at 512 examples, 2.8 s instead of 7.7 s (45 s -> 7 s on 10,201 examples).
            tol=1e-3,
            random_state=seed,
            class_weight=class_weight,
        )
    logger.warning("Some label has a single training example: no cross-validation, C=1.")
    return LogisticRegression(C=1.0, max_iter=2000, random_state=seed, class_weight=class_weight)


# Below this many examples the folds fit faster one after another (on one BLAS thread: 0.56 s for
# 900 examples of 1,536 features, scripts/bench/head_threads.py) than worker processes start (~2 s).
PARALLEL_FROM = 5000


def _jobs(num_examples: int) -> int | None:
    """Folds fit in parallel on every core (the body is idle meanwhile) when the data is big enough."""
    return -1 if num_examples >= PARALLEL_FROM else None


def _fit(estimator: Any, features: np.ndarray, labels: np.ndarray, blas_threads: int | None = 1) -> Any:
    """``estimator.fit``; ``blas_threads=1`` for lbfgs, whose steps are matrix-vector products too
    small for several BLAS threads: waking them costs more than they save (logistic-cv on 900
    examples of 1,536 features: 0.56 s on one thread, 3.75 s on two; scripts/bench/head_threads.py)."""
    from threadpoolctl import threadpool_limits

    with warnings.catch_warnings(), threadpool_limits(blas_threads, user_api="blas"):
        warnings.simplefilter("ignore", category=FutureWarning)  # sklearn API notices, not user issues
        return estimator.fit(features, labels)


def fit_logistic_head(
    head: LinearHead,
    features: np.ndarray,
    labels: np.ndarray,
    seed: int,
    class_weights: list[float] | None = None,
) -> float:
    """Fit ``head`` as a logistic regression, its regularisation chosen by cross-validation.

    scikit-learn does the fitting; the coefficients are copied into the linear
    layer, so the saved model is the usual safetensors file (no pickle) and
    predicts exactly like the fitted estimator. ``class_weights`` (one per label) weigh each
    class's examples. Returns the training log-loss.
    """
    from sklearn.metrics import log_loss

    estimator = _fit(_logistic(labels, seed, _class_weight(class_weights)), features, labels)
    weight, bias = _as_softmax_layer(
        estimator.coef_, estimator.intercept_, estimator.classes_, head.num_labels
    )
    _copy_layer(head, weight, bias)
    head.chosen_c = float(np.ravel(estimator.C_)[0]) if hasattr(estimator, "C_") else estimator.C
    if hasattr(estimator, "C_"):
        logger.info("logistic-cv: C=%s chosen by cross-validation", head.chosen_c)
    return float(log_loss(labels, estimator.predict_proba(features), labels=estimator.classes_))


def fit_one_vs_rest_head(
    head: LinearHead,
    features: np.ndarray,
    targets: np.ndarray,
    seed: int,
    pos_weight: list[float] | None = None,
) -> float:
    """Fit each output of ``head`` as its own cross-validated logistic regression (multi-label:
    sigmoid(output j) is label j's probability). Returns the mean training log-loss."""
    from sklearn.metrics import log_loss

    weight = np.zeros((targets.shape[1], features.shape[1]), dtype=np.float32)
    bias = np.zeros(targets.shape[1], dtype=np.float32)
    losses = []
    for j, column in enumerate(targets.T.astype(int)):
        positives = column.mean()
        if positives in (0.0, 1.0):  # a label always or never present: its log-odds, clipped
            bias[j] = np.clip(np.log((positives + 1e-4) / (1 - positives + 1e-4)), -10, 10)
            continue
        balance = None if pos_weight is None else {0: 1.0, 1: pos_weight[j]}
        estimator = _fit(_logistic(column, seed, balance), features, column)
        weight[j], bias[j] = estimator.coef_[0], estimator.intercept_[0]
        losses.append(log_loss(column, estimator.predict_proba(features)[:, 1], labels=[0, 1]))
    _copy_layer(head, weight, bias)
    logger.info("logistic-cv: %d one-vs-rest regressions", targets.shape[1])
    return float(np.mean(losses)) if losses else 0.0


def fit_ridge_head(head: LinearHead, features: np.ndarray, targets: np.ndarray) -> float:
    """Fit ``head`` as ridge regression on (standardised) targets, the penalty of each target chosen
    by efficient leave-one-out cross-validation over a wide grid. Returns the training MSE."""
    from sklearn.linear_model import RidgeCV

    ridge = RidgeCV(alphas=np.logspace(-3, 5, 17), alpha_per_target=True)
    estimator = _fit(ridge, features, targets, blas_threads=None)  # one decomposition: BLAS threads pay
    _copy_layer(head, np.atleast_2d(estimator.coef_), np.atleast_1d(estimator.intercept_))
    head.chosen_alpha = estimator.alpha_
    logger.info("ridge-cv: alpha=%s chosen by leave-one-out cross-validation", np.round(estimator.alpha_, 4))
    return float(np.mean((estimator.predict(features).reshape(targets.shape) - targets) ** 2))


def out_of_fold_logits(
    features: np.ndarray, labels: np.ndarray, head: LinearHead, seed: int,
    class_weights: list[float] | None = None,
) -> np.ndarray:  # fmt: skip
    """Each example's log-probabilities from a logistic regression fitted on the other folds, at
    the C the fitted ``head`` chose (the k-fold protocol's validation outputs). Folds as in
    :func:`fit_logistic_head`: up to 5, stratified."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from threadpoolctl import threadpool_limits

    folds = int(min(5, np.unique(labels, return_counts=True)[1].min()))
    if folds < 2:
        raise ValueError("cross-validation needs at least two examples of every class")
    estimator = LogisticRegression(
        C=getattr(head, "chosen_c", 1.0), max_iter=2000, tol=1e-3, random_state=seed,
        class_weight=_class_weight(class_weights),
    )  # fmt: skip
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings(), threadpool_limits(1, user_api="blas"):  # as in _fit
        warnings.simplefilter("ignore", category=FutureWarning)
        proba = cross_val_predict(
            estimator, features, labels, cv=cv, method="predict_proba", n_jobs=_jobs(len(labels))
        )
    logits = np.full((len(labels), head.num_labels), -1e4, dtype=np.float32)
    logits[:, np.unique(labels)] = np.log(np.clip(proba, 1e-12, 1.0))
    return logits


def out_of_fold_values(features: np.ndarray, targets: np.ndarray, head: LinearHead, seed: int) -> np.ndarray:
    """Each example's (standardised) prediction from a ridge regression fitted on the other folds,
    at the penalties the fitted ``head`` chose; 5 folds."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold, cross_val_predict

    alpha = np.atleast_1d(getattr(head, "chosen_alpha", 1.0))
    cv = KFold(min(5, len(targets)), shuffle=True, random_state=seed)
    values = cross_val_predict(
        Ridge(alpha=alpha if alpha.size > 1 else float(alpha[0])), features, targets, cv=cv
    )
    return values.reshape(len(targets), -1).astype(np.float32)


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
