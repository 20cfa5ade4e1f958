"""Multi-label, regression and imbalanced classes: reading the targets, training, scoring, saving."""

from __future__ import annotations

import itertools
import json
import logging
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import FILLER, NEGATIVE, POSITIVE
from sklearn.metrics import f1_score, hamming_loss, mean_squared_error

from nlptransfer import FinetuneConfig, TransferModel, train
from nlptransfer.data import load_data
from nlptransfer.engine.objectives.contrastive import sample_pairs
from nlptransfer.errors import ConfigError, DataError
from nlptransfer.tasks.base import MultiLabelClassification, Regression
from nlptransfer.tasks.metrics import compute_metrics
from nlptransfer.tasks.setup import configure_task


def tagged_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """Texts with a 'pos' tag (a positive word), a 'neg' tag (a negative word), both or neither, and a
    score that counts them."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words, tags = rng.sample(FILLER, 3), []
        if rng.random() < 0.5:
            words.append(rng.choice(POSITIVE))
            tags.append("pos")
        if rng.random() < 0.4:
            words.append(rng.choice(NEGATIVE))
            tags.append("neg")
        rng.shuffle(words)
        score = 2.0 * ("pos" in tags) - 1.5 * ("neg" in tags) + rng.gauss(0, 0.1)
        rows.append({
            "text": " ".join(words), "tags": ";".join(tags), "tag_list": json.dumps(tags),
            "pos": int("pos" in tags), "neg": int("neg" in tags), "score": score, "score2": 100 - 50 * score,
        })  # fmt: skip
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tagged_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tagged") / "train.csv"
    tagged_frame(240).to_csv(path, index=False)
    return path


def _load(path: Path, **options) -> object:
    return load_data(FinetuneConfig(train_file=str(path), **options))


# Reading the targets: problem type, forms, bad input


@pytest.mark.parametrize(
    ("options", "kind", "reason"),
    [
        ({"label_column": "tags", "label_separator": ";"}, "multi_label_classification", "--label_separator"),
        ({"label_column": "tag_list"}, "multi_label_classification", "a list per row"),
        ({"label_columns": ["pos", "neg"]}, "multi_label_classification", "all 0/1"),
        ({"label_column": "score"}, "regression", "fractions"),
        ({"label_columns": ["score", "score2"]}, "regression", "other than 0/1"),
        ({"label_column": "pos"}, "single_label_classification", "2 distinct whole-number labels"),
    ],
)
def test_the_problem_type_is_inferred_from_the_labels_and_logged(
    tagged_csv: Path, caplog: pytest.LogCaptureFixture, options: dict, kind: str, reason: str
) -> None:
    with caplog.at_level(logging.INFO, logger="nlptransfer"):
        data = _load(tagged_csv, **options)
    assert data.problem_type == kind
    assert reason in data.report["problem_type_reason"]
    assert f"problem type: {kind}" in caplog.text


def test_the_three_multi_label_forms_give_the_same_targets(tagged_csv: Path) -> None:
    by_columns = _load(tagged_csv, label_columns=["neg", "pos"])
    delimited = _load(tagged_csv, label_column="tags", label_separator=";")
    listed = _load(tagged_csv, label_column="tag_list")
    for data in (delimited, listed):
        assert data.label_names == by_columns.label_names == ["neg", "pos"]
        np.testing.assert_array_equal(data.train.labels, by_columns.train.labels)
        assert data.train.inputs == by_columns.train.inputs
    # Texts with neither tag stay: an empty label set is an example.
    assert (by_columns.train.labels.sum(1) == 0).any()
    assert by_columns.report["dropped_rows"] == {}


def test_integer_labels_that_could_be_a_score_stop_and_ask(tmp_path: Path) -> None:
    path = tmp_path / "ages.csv"
    pd.DataFrame({"text": [f"text {i}" for i in range(60)], "label": range(60)}).to_csv(path, index=False)
    with pytest.raises(ConfigError, match=r"60 distinct whole numbers: classes or a score.*--problem_type"):
        _load(path)
    assert _load(path, problem_type="regression").problem_type == "regression"


def test_explicit_problem_type_wins(tagged_csv: Path) -> None:
    data = _load(tagged_csv, label_column="pos", problem_type="regression")
    assert data.problem_type == "regression" and data.label_names == ["pos"]
    assert data.train.labels.dtype == np.float32


def test_a_test_label_never_seen_in_training_is_listed(tmp_path: Path) -> None:
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    tagged_frame(60).to_csv(train, index=False)
    pd.DataFrame({"text": ["x good", "y bad"], "tags": ["pos;sarcastic", "irony"]}).to_csv(test, index=False)
    with pytest.raises(
        DataError, match=r"test data has labels never seen in training: \['irony', 'sarcastic'\]"
    ):
        _load(train, test_file=str(test), label_column="tags", label_separator=";")


def test_non_numeric_regression_targets_name_their_rows(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    frame = tagged_frame(40)
    frame["score"] = frame["score"].astype(object)
    frame.loc[[3, 7], "score"] = ["high", "n/a?"]
    frame.to_csv(path, index=False)
    with pytest.raises(
        DataError, match=r"'score' holds 2 values that are not numbers \(row 4: 'high', row 8"
    ):
        _load(path, label_column="score", problem_type="regression")


def test_nan_targets_are_dropped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    frame = tagged_frame(50)
    frame.loc[[1, 2, 3], "score"] = np.nan
    frame.to_csv(path, index=False)
    data = _load(path, label_column="score")
    assert data.report["dropped_missing_target"] == {"train": 3}
    assert len(data.train) + len(data.validation) == 47
    assert not np.isnan(data.train.labels).any()


def test_a_constant_target_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    frame = tagged_frame(40).assign(score=2.5)
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"target \['score'\] is constant.*nothing to learn"):
        _load(path, label_column="score", problem_type="regression")


def test_missing_label_columns_list_those_that_exist(tagged_csv: Path) -> None:
    with pytest.raises(DataError, match=r"no column 'toxic'.*Columns that exist: 'text', 'tags'"):
        _load(tagged_csv, label_columns=["pos", "toxic"])


def test_multi_label_columns_must_be_zero_or_one(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    tagged_frame(40).assign(pos="yes").to_csv(path, index=False)
    with pytest.raises(DataError, match=r"'pos' holds 'yes' \(row 1\).*0 or 1"):
        _load(path, label_columns=["pos", "neg"], problem_type="multi_label_classification")


def test_options_a_task_cannot_serve_are_refused_before_training(tagged_csv: Path) -> None:
    data = _load(tagged_csv, label_column="score")
    for options, message in [
        ({"strategy": "contrastive"}, "contrastive pairs examples by their labels; a regression has none"),
        ({"head": "logistic-cv"}, "--head logistic-cv cannot fit a regression head; use --head ridge-cv"),
        ({"metrics": ["accuracy"]}, "\\['accuracy'\\] cannot score a regression task"),
        ({"class_weight": "balanced"}, "a regression has none"),
        ({"samples_per_label": 4}, None),
    ]:
        config = FinetuneConfig(train_file=str(tagged_csv), label_column="score", **options)
        if message is None:  # a sampling option: refused when the data is read
            with pytest.raises(ConfigError, match="single-label classification only"):
                load_data(config)
            continue
        with pytest.raises(ConfigError, match=message):
            configure_task(config, data)


# The tasks


def test_multi_label_task_loss_scores_thresholds_and_config() -> None:
    task = MultiLabelClassification(pos_weight=[1.0, 3.0])
    logits = torch.tensor([[2.0, -1.0], [-2.0, 0.2], [0.1, 0.4]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    expected = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(task.loss(logits, targets), expected)
    scores = task.activate(logits).numpy()
    assert task.decode(scores, ["a", "b"]) == [["a"], ["b"], ["a", "b"]]  # 0.5 until tuned
    rng = np.random.default_rng(0)
    truth = rng.random((200, 2)) < 0.3
    # Label 0 is predicted well only above a high threshold; the tuned one finds it.
    val_logits = torch.tensor(np.where(truth, 3.0, 1.0) + rng.normal(0, 0.3, (200, 2)), dtype=torch.float32)
    tuned = task.tune(val_logits, truth.astype(np.float32))
    assert all(0.75 <= t <= 0.9 for t in tuned["thresholds"])
    before = f1_score(truth, torch.sigmoid(val_logits).numpy() >= 0.5, average="micro")
    after = f1_score(truth, task.predictions(val_logits), average="micro")
    assert after > before + 0.2
    assert (
        MultiLabelClassification(**{k: v for k, v in task.get_config().items() if k != "type"}).thresholds
        == (tuned["thresholds"])
    )


def test_regression_task_trains_on_standardised_targets_and_answers_in_units() -> None:
    task = Regression(mean=[100.0, -2.0], std=[50.0, 0.5])
    targets = torch.tensor([[150.0, -2.5], [100.0, -1.0]])
    outputs = torch.tensor([[1.0, -1.0], [0.5, 1.0]])
    standard = torch.tensor([[1.0, -1.0], [0.0, 2.0]])
    torch.testing.assert_close(task.loss(outputs, targets), F.mse_loss(outputs, standard))
    np.testing.assert_allclose(task.predictions(outputs), [[150.0, -2.5], [125.0, -1.5]])
    assert task.decode(task.predictions(outputs), ["y1", "y2"])[0] == {"y1": 150.0, "y2": -2.5}
    huber = Regression(mean=[100.0, -2.0], std=[50.0, 0.5], loss="huber")
    torch.testing.assert_close(huber.loss(outputs, targets), F.huber_loss(outputs, standard))


def test_task_metrics_match_scikit_learn() -> None:
    refs = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 0], [0, 1, 1]])
    preds = np.array([[1, 0, 0], [0, 0, 0], [1, 0, 0], [0, 1, 1]])
    scores = compute_metrics(preds, refs, ["f1_micro", "f1_samples", "hamming_loss", "subset_accuracy"])
    assert scores["f1_micro"] == pytest.approx(f1_score(refs, preds, average="micro"))
    assert scores["hamming_loss"] == pytest.approx(hamming_loss(refs, preds))
    assert scores["subset_accuracy"] == pytest.approx(0.5)
    # The empty label set predicted empty counts as right (F1 1), not as undefined (0).
    assert scores["f1_samples"] == pytest.approx((2 / 3 + 1 + 2 / 3 + 1) / 4)
    y, p = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 1.5, 3.5, 5.0])
    scores = compute_metrics(p, y, ["mse", "spearman", "pearson"])
    assert scores["mse"] == pytest.approx(mean_squared_error(y, p))
    assert scores["spearman"] == pytest.approx(0.9486832980505138)
    assert compute_metrics(np.ones(4), y, ["pearson"]) == {"pearson": 0.0}  # constant: undefined, not NaN


# Imbalance


def _imbalanced(tmp_path: Path, minority: int, majority: int) -> Path:
    rng = random.Random(0)

    def row(words: list[str], label: str) -> dict[str, str]:
        return {"text": f"{' '.join(rng.sample(FILLER, 3))} {rng.choice(words)}", "label": label}

    rows = [row(POSITIVE, "pos") for _ in range(minority)] + [row(NEGATIVE, "neg") for _ in range(majority)]
    path = tmp_path / f"imbalanced-{minority}-{majority}.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(("minority", "majority", "weighted"), [(30, 300, True), (100, 250, False)])
def test_auto_class_weights_follow_the_imbalance_rule(
    tmp_path: Path, minority: int, majority: int, weighted: bool
) -> None:
    config = FinetuneConfig(train_file=str(_imbalanced(tmp_path, minority, majority)))
    data = load_data(config)
    resolved, task, notes = configure_task(config, data)
    assert notes["class_weight"] == ("balanced" if weighted else "none")
    assert "largest class / smallest" in notes["class_weight_rule"]
    assert resolved.metric_for_best_model == ("f1_macro" if weighted else "accuracy")
    if weighted:  # scikit-learn's "balanced": n / (classes x count)
        counts = np.bincount(data.train.labels)
        np.testing.assert_allclose(task.class_weights, len(data.train) / (2 * counts))
        logits, targets = torch.randn(6, 2), torch.tensor([0, 1, 1, 1, 1, 1])
        weight = torch.tensor(task.class_weights, dtype=torch.float32)
        torch.testing.assert_close(
            task.loss(logits, targets), F.cross_entropy(logits, targets, weight=weight)
        )
    else:
        assert task.class_weights is None


def test_balanced_contrastive_pairs_draw_each_class_as_often() -> None:
    labels = [0] * 90 + [1] * 10
    anchors = sample_pairs(labels, 20, 100_000, seed=0, balanced=True)[:, 0].astype(int)
    minority_share = np.isin(anchors, np.arange(90, 100)).mean()
    assert 0.45 < minority_share < 0.55
    plain = sample_pairs(labels, 20, 100_000, seed=0)[:, 0].astype(int)
    assert np.isin(plain, np.arange(90, 100)).mean() == pytest.approx(0.1)


def test_label_set_pairs_are_scored_by_overlap() -> None:
    sets = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0], [1, 0, 0]])
    pairs = sample_pairs(sets, 5, 10_000, seed=0)
    for a, b, target in pairs:
        x, y = sets[int(a)].astype(bool), sets[int(b)].astype(bool)
        union = (x | y).sum()
        assert target == pytest.approx(1.0 if union == 0 else (x & y).sum() / union)
    assert (pairs[:, 2] > 0).mean() >= 0.45  # half the pairs share a label (or are both empty)


# End to end


def _run(tmp_path: Path, tiny_bert: str, csv: Path, name: str, **options) -> tuple[dict, Path]:
    out = tmp_path / name
    config = FinetuneConfig(
        model=tiny_bert, train_file=str(csv), output_dir=str(out), test_split=0.2,
        learning_rate=5e-3, batch_size=16, report_to=["none"], **{"epochs": 4, **options},
    )  # fmt: skip
    return train(config), out


@pytest.mark.parametrize(
    "strategy", ["feature-extraction", "finetune", "contrastive", "lora", "gradual-unfreezing"]
)
def test_multi_label_trains_tunes_thresholds_saves_and_predicts_label_sets(
    tiny_bert: str, tagged_csv: Path, tmp_path: Path, strategy: str
) -> None:
    options = {"strategy": strategy, "epochs": 1} if strategy == "contrastive" else {"strategy": strategy}
    results, out = _run(
        tmp_path, tiny_bert, tagged_csv, "ml", label_column="tags", label_separator=";", **options
    )
    assert set(results["test"]) == {"f1_micro", "f1_macro", "f1_samples", "subset_accuracy", "hamming_loss"}
    assert results["task"]["metric_for_best_model"] == "f1_micro"
    assert len(results["task"]["thresholds"]) == 2
    assert set(results["per_label"]["table"]) == {"neg", "pos"}
    saved = json.loads((out / "results.json").read_text())
    assert saved["problem_type"] == "multi_label_classification"
    model = TransferModel.from_pretrained(out)
    assert model.task.thresholds == results["task"]["thresholds"]
    texts = ["the good film", "a bad and awful plot", "the plot was great and dull"]
    predictions = model.predict(texts)
    assert predictions.probabilities.shape == (3, 2)
    assert all(set(labels) <= {"neg", "pos"} for labels in predictions.labels)
    again = TransferModel.from_pretrained(out).predict(texts)
    np.testing.assert_array_equal(again.probabilities, predictions.probabilities)
    records = predictions.to_records()
    assert set(records[0]) == {"labels", "probabilities"} and set(records[0]["probabilities"]) == {
        "neg",
        "pos",
    }


def test_multi_label_logistic_cv_head_learns_the_tags(
    tiny_bert: str, tagged_csv: Path, tmp_path: Path
) -> None:
    results, _ = _run(
        tmp_path, tiny_bert, tagged_csv, "ml-cv", label_columns=["pos", "neg"], head="logistic-cv"
    )
    # A random tiny body still separates the tag words: the one-vs-rest regressions find them.
    assert results["test"]["f1_micro"] > 0.8
    assert results["phases"][0]["loop"] == "logistic-cv"


def test_regression_predicts_in_the_targets_units_and_round_trips(
    tiny_bert: str, tagged_csv: Path, tmp_path: Path
) -> None:
    results, out = _run(
        tmp_path, tiny_bert, tagged_csv, "reg", label_columns=["score", "score2"], head="ridge-cv"
    )
    assert set(results["test"]) == {"mse", "mae", "pearson", "spearman", "r2"}
    assert results["task"]["metric_for_best_model"] == "spearman"
    assert results["test"]["spearman"] > 0.5
    model = TransferModel.from_pretrained(out)
    values = model.predict(["the good film", "a bad and awful plot"]).probabilities
    assert values[0, 1] < values[1, 1]  # score2 = 100 - 50 x score: the positive text scores lower
    assert 0 < values[:, 1].mean() < 250  # in the target's own units (its mean is about 75)
    assert set(results["per_label"]["table"]) == {"score", "score2"}


def test_regression_with_a_gradient_head_picks_the_epoch_by_spearman(
    tiny_bert: str, tagged_csv: Path, tmp_path: Path
) -> None:
    results, _ = _run(
        tmp_path, tiny_bert, tagged_csv, "reg-linear", label_column="score", metric_for_best_model="mse"
    )
    mse = [epoch["validation"]["mse"] for epoch in results["history"]]
    assert results["best_epoch"] == int(np.argmin(mse)) + 1  # lower is better for mse


def test_imbalanced_run_reports_per_class_scores(tiny_bert: str, tmp_path: Path) -> None:
    results, _ = _run(tmp_path, tiny_bert, _imbalanced(tmp_path, 30, 300), "imb", head="logistic-cv")
    assert results["task"]["class_weight"] == "balanced"
    assert results["task"]["metric_for_best_model"] == "f1_macro"
    table = results["per_label"]["table"]
    assert set(table) == {"neg", "pos"} and table["pos"]["support"] > 0
    assert results["data"]["targets"]["imbalance_ratio"] >= 3


# Long documents


def long_frame(n: int, seed: int = 0, filler: int = 150) -> pd.DataFrame:
    """Texts whose only sentiment words come after ``filler`` neutral ones: truncation loses them."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pos = i % 2 == 0
        words = [rng.choice(FILLER) for _ in range(filler)] + [
            rng.choice(POSITIVE if pos else NEGATIVE) for _ in range(5)
        ]
        rows.append({"text": " ".join(words), "label": "pos" if pos else "neg"})
    return pd.DataFrame(rows)


def test_pool_windows_averages_or_maxes_each_texts_windows() -> None:
    from nlptransfer.model.pooling import pool_windows

    features = torch.tensor([[1.0, 4.0], [3.0, 0.0], [5.0, 5.0], [-1.0, 2.0]])
    owner = torch.tensor([0, 0, 1, 2])
    torch.testing.assert_close(
        pool_windows(features, owner), torch.tensor([[2.0, 2.0], [5.0, 5.0], [-1.0, 2.0]])
    )
    torch.testing.assert_close(
        pool_windows(features, owner, "max"), torch.tensor([[3.0, 4.0], [5.0, 5.0], [-1.0, 2.0]])
    )


def test_windows_cover_the_whole_text_with_the_stated_overlap(tiny_bert: str) -> None:
    model = TransferModel.from_backbone(tiny_bert, ["neg", "pos"], max_length=16)
    text = " ".join(["good", "bad", "dull"] * 20)  # 60 words, one token each
    windows = model.backbone.tokenize_windows([text, ""], 16, 4)
    assert len(windows[1]) == 1  # an empty text is one short window
    whole = model.backbone.tokenize([text], None, 10_000)["input_ids"][0][1:-1]  # without [CLS] [SEP]
    inner = [w["input_ids"][1:-1] for w in windows[0]]
    assert all(len(w["input_ids"]) <= 16 for w in windows[0])
    for before, after in itertools.pairwise(inner):
        assert before[-4:] == after[:4]  # consecutive windows share 4 tokens
    rebuilt = inner[0] + [t for w in inner[1:] for t in w[4:]]
    assert rebuilt == whole


def test_chunking_reads_what_truncation_cuts_and_round_trips(tiny_bert: str, tmp_path: Path) -> None:
    csv = tmp_path / "long.csv"
    long_frame(120).to_csv(csv, index=False)
    scores = {}
    for mode in ("truncate", "chunk"):
        results, out = _run(tmp_path, tiny_bert, csv, mode, long_text=mode, max_length=32, head="logistic-cv")
        scores[mode] = results["test"]["accuracy"]
    assert scores["chunk"] >= 0.9 and scores["chunk"] > scores["truncate"] + 0.3
    model = TransferModel.from_pretrained(out)
    assert model.long_text is not None and model.long_text.stride == 8  # a quarter of 32
    texts = long_frame(4, seed=5)["text"].tolist()
    first = model.predict(texts)
    np.testing.assert_array_equal(
        TransferModel.from_pretrained(out).predict(texts).probabilities, first.probabilities
    )
    assert first.labels == ["pos", "neg", "pos", "neg"]


def test_chunked_features_are_cached_one_row_per_document(tiny_bert: str, tmp_path: Path) -> None:
    csv = tmp_path / "long.csv"
    long_frame(40).to_csv(csv, index=False)
    chunked = {"strategy": "feature-extraction", "long_text": "chunk", "max_length": 32}
    first, _ = _run(tmp_path, tiny_bert, csv, "a", **chunked)
    again, _ = _run(tmp_path, tiny_bert, csv, "b", **chunked)
    assert not any(first["feature_cache"]["hits"].values()) and all(again["feature_cache"]["hits"].values())
    maxed, _ = _run(tmp_path, tiny_bert, csv, "c", **chunked, chunk_pooling="max")
    assert not any(maxed["feature_cache"]["hits"].values())  # another pooling of the windows: another entry


def test_chunking_options_that_cannot_apply_are_clear_errors(tiny_bert: str, tagged_csv: Path) -> None:
    with pytest.raises(ConfigError, match="--chunk_stride applies to --long_text chunk"):
        FinetuneConfig(chunk_stride=8, long_text="truncate")
    from nlptransfer.model.transfer import LongText

    with pytest.raises(ConfigError, match="must be between 0 and half of --max_length 32"):
        TransferModel.from_backbone(tiny_bert, ["a", "b"], max_length=32, long_text=LongText(20))
    model = TransferModel.from_backbone(tiny_bert, ["a", "b"], max_length=32, long_text=LongText(8))
    with pytest.raises(ConfigError, match="reads single texts"):
        model.preprocess(["a text"], ["its pair"])


def test_compare_scores_a_regression_by_its_own_metric_on_example_budgets(
    tiny_bert: str, tagged_csv: Path, tmp_path: Path
) -> None:
    from nlptransfer.cli import main

    out = tmp_path / "compare"
    argv = ["compare", "--model", tiny_bert, "--train_file", str(tagged_csv), "--label_column", "score",
            "--output_dir", str(out), "--arms", "feature-extraction", "--budgets", "40", "all",
            "--seeds", "0", "--batch_size", "8", "--min_steps", "4", "--probe_steps", "1",
            "--familiarity_examples", "10"]  # fmt: skip
    assert main(argv) == 0
    cells = json.loads((out / "cells.json").read_text())
    assert {c["metric"] for c in cells} == {"spearman"}
    assert [c["num_train"] for c in cells if c["budget"] == "40"] == [
        40
    ]  # 40 training examples, not per label
    report = (out / "report.md").read_text()
    assert "## Test spearman" in report and "its spearman" in report


def test_predict_command_writes_label_sets_and_values(
    tiny_bert: str, tagged_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from nlptransfer.cli import main

    _, multi = _run(tmp_path, tiny_bert, tagged_csv, "ml", label_columns=["pos", "neg"], head="logistic-cv")
    _, values = _run(
        tmp_path, tiny_bert, tagged_csv, "reg", label_columns=["score", "score2"], head="ridge-cv"
    )
    texts = tmp_path / "texts.csv"
    pd.DataFrame({"text": ["the good film", "a bad and awful plot", "the plot"]}).to_csv(texts, index=False)
    assert (
        main(
            [
                "predict",
                "--model",
                str(multi),
                "--input_file",
                str(texts),
                "--output_file",
                str(tmp_path / "ml.csv"),
            ]
        )
        == 0
    )
    written = pd.read_csv(tmp_path / "ml.csv", keep_default_na=False)
    assert list(written.columns) == ["text", "prediction", "prob_pos", "prob_neg"]
    sets = [answer.split(";") if answer else [] for answer in written["prediction"]]  # joined by ';'
    assert "pos" in sets[0] and "neg" in sets[1]
    assert main(["predict", "--model", str(values), "--text", "the good film"]) == 0
    shown = capsys.readouterr().out.strip().splitlines()[-1].split("\t")
    assert len(shown) == 3 and shown[-1] == "the good film"  # score, score2, the text
    # score2 = 100 - 50 x score: standardised, the two targets are one up to sign, so the answers in
    # their own units keep that relation exactly (up to the 4 printed decimals).
    assert float(shown[1]) == pytest.approx(100 - 50 * float(shown[0]), abs=0.01)


def test_pairs_encoded_apart_train_save_and_predict(tiny_bert: str, tmp_path: Path) -> None:
    rng = random.Random(0)
    rows = []
    for _ in range(160):
        a, b = rng.choice(POSITIVE + NEGATIVE), rng.choice(POSITIVE + NEGATIVE)
        rows.append({"text": f"{a} {rng.choice(FILLER)}", "pair": f"{b} {rng.choice(FILLER)}",
                     "score": float((a in POSITIVE) == (b in POSITIVE)) + rng.gauss(0, 0.1)})  # fmt: skip
    csv = tmp_path / "pairs.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    results, out = _run(tmp_path, tiny_bert, csv, "apart", label_column="score", text_pair_column="pair",
                        pair_encoding="separate", head="ridge-cv")  # fmt: skip
    model = TransferModel.from_pretrained(out)
    assert model.pair_encoding == "separate"
    # [u, v, |u - v|, u * v] of each pooled 32-wide layer
    assert model.head.in_features == 4 * 32 * len(model.pooling.layers)
    first = model.predict(["good the", "bad a"], ["great a", "great a"]).probabilities
    np.testing.assert_array_equal(
        TransferModel.from_pretrained(out)
        .predict(["good the", "bad a"], ["great a", "great a"])
        .probabilities,
        first,
    )
    with pytest.raises(ConfigError, match="reads text pairs"):
        model.predict(["good the"])
    joint, _ = _run(
        tmp_path,
        tiny_bert,
        csv,
        "joint",
        label_column="score",
        text_pair_column="pair",
        head="ridge-cv",
        pair_encoding="joint",
    )
    assert results["feature_cache"]["entries"] != joint["feature_cache"]["entries"]
    with pytest.raises(ConfigError, match="give --text_pair_column too"):
        FinetuneConfig(pair_encoding="separate")
