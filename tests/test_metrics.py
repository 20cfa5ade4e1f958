"""Local classification metrics: same values as scikit-learn, no hub needed."""

from __future__ import annotations

import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from nlptransfer.errors import ConfigError, UnknownNameError
from nlptransfer.tasks.metrics import DEFAULT_METRICS, LOCAL_METRICS, compute_metrics, load_metric

# Three classes, class 2 never predicted (precision zero_division path), uneven errors.
REFERENCES = [0, 0, 0, 1, 1, 1, 1, 2, 2, 0]
PREDICTIONS = [0, 1, 0, 1, 1, 0, 1, 1, 0, 0]

SKLEARN = {
    "accuracy": accuracy_score(REFERENCES, PREDICTIONS),
    "f1_macro": f1_score(REFERENCES, PREDICTIONS, average="macro", zero_division=0),
    "precision_macro": precision_score(REFERENCES, PREDICTIONS, average="macro", zero_division=0),
    "recall_macro": recall_score(REFERENCES, PREDICTIONS, average="macro", zero_division=0),
}


def test_reference_values_are_distinct() -> None:
    # Guards the example itself: a swapped metric would go unnoticed if values coincided.
    assert SKLEARN["accuracy"] == pytest.approx(0.6)
    assert len({round(v, 6) for v in SKLEARN.values()}) == 4


@pytest.mark.parametrize("name", sorted(SKLEARN))
def test_local_metric_matches_sklearn(name: str) -> None:
    result = load_metric(name).compute(predictions=PREDICTIONS, references=REFERENCES)
    assert set(result) == {name}
    assert isinstance(result[name], float)
    assert result[name] == pytest.approx(SKLEARN[name], abs=1e-12)


def test_argument_order_matters_like_sklearn() -> None:
    # precision and recall swap when references and predictions swap: the metric must not.
    precision = load_metric("precision_macro").compute(predictions=PREDICTIONS, references=REFERENCES)
    expected = precision_score(REFERENCES, PREDICTIONS, average="macro", zero_division=0)
    swapped = precision_score(PREDICTIONS, REFERENCES, average="macro", zero_division=0)
    assert expected != pytest.approx(swapped)
    assert precision["precision_macro"] == pytest.approx(expected)


def test_compute_metrics_merges_all() -> None:
    results = compute_metrics(PREDICTIONS, REFERENCES)
    assert set(results) == set(DEFAULT_METRICS) == set(SKLEARN)
    for name, value in SKLEARN.items():
        assert results[name] == pytest.approx(value, abs=1e-12)


def test_compute_metrics_subset_and_perfect_predictions() -> None:
    results = compute_metrics([1, 0, 1], [1, 0, 1], names=["accuracy", "f1_macro"])
    assert results == {"accuracy": 1.0, "f1_macro": 1.0}


def test_compute_metrics_accepts_tuples() -> None:
    assert compute_metrics((0, 1, 1, 0), (0, 1, 0, 0), names=("accuracy",)) == {"accuracy": 0.75}


def test_local_metric_registry() -> None:
    assert set(LOCAL_METRICS.names()) == {
        "accuracy", "f1_macro", "precision_macro", "recall_macro",  # single-label
        "f1_micro", "f1_samples", "subset_accuracy", "hamming_loss",  # multi-label
        "mse", "mae", "pearson", "spearman", "r2",  # regression
    }  # fmt: skip


def test_unknown_metric_offline_lists_builtin(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # evaluate.load also looks for a local folder of that name
    with pytest.raises(UnknownNameError, match="--trust_remote_code") as refused:
        compute_metrics([0, 1], [0, 1], names=["accuracy", "no_such_metric_xyz"])
    # With the opt-in, evaluate.load is tried and its failure (offline) is the cause.
    with pytest.raises(UnknownNameError, match="could not load") as info:
        compute_metrics([0, 1], [0, 1], names=["accuracy", "no_such_metric_xyz"], trust_remote_code=True)
    for error in (refused.value, info.value):
        message = str(error)
        assert "'no_such_metric_xyz'" in message
        assert "built in: accuracy, f1_macro, f1_micro, f1_samples, hamming_loss" in message
        assert isinstance(error, ConfigError) and isinstance(error, ValueError)
    assert refused.value.__cause__ is None and info.value.__cause__ is not None
