"""--samples_per_label: K training examples per label, reproducible with --seed."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from conftest import sentiment_frame

from nlptransfer.config import FinetuneConfig, parse_config
from nlptransfer.data.prepare import LabelledData, load_data
from nlptransfer.errors import ConfigError


def _load(train_csv: Path, **kwargs) -> LabelledData:
    return load_data(FinetuneConfig(train_file=str(train_csv), validation_split=0.2, **kwargs))


def _label_counts(data: LabelledData) -> dict[str, int]:
    return {data.label_names[y]: n for y, n in Counter(data.train.labels).items()}


@pytest.fixture
def unbalanced_csv(tmp_path: Path) -> Path:
    """60 'pos' rows and only 3 'neu' rows, beside 60 'neg'."""
    frame = pd.concat(
        [sentiment_frame(120), pd.DataFrame({"text": [f"so so {i}" for i in range(3)], "label": "neu"})]
    )
    path = tmp_path / "unbalanced.csv"
    frame.to_csv(path, index=False)
    return path


def test_keeps_k_examples_per_label(sentiment_csv: Path) -> None:
    data = _load(sentiment_csv, samples_per_label=5, seed=0)
    assert _label_counts(data) == {"neg": 5, "pos": 5}
    assert data.report["samples_per_label"] == {
        "k": 5,
        "seed": 0,
        "train_examples_per_label": {"neg": 5, "pos": 5},
    }


def test_sample_comes_from_the_training_split_only(sentiment_csv: Path) -> None:
    full = _load(sentiment_csv, seed=0)
    few = _load(sentiment_csv, samples_per_label=4, seed=0)
    assert set(few.train.inputs) <= set(full.train.inputs)
    # The held-out split is made before sampling: it does not change.
    assert few.validation.inputs == full.validation.inputs
    assert few.validation.labels == full.validation.labels


def test_test_file_is_untouched(sentiment_csv: Path, tmp_path: Path) -> None:
    test_csv = tmp_path / "test.csv"
    sentiment_frame(30, seed=7).to_csv(test_csv, index=False)
    data = _load(sentiment_csv, test_file=str(test_csv), samples_per_label=3, seed=1)
    assert data.test is not None and len(data.test) == 30
    assert len(data.train) == 6


def test_same_seed_same_sample_other_seed_other_sample(sentiment_csv: Path) -> None:
    first = _load(sentiment_csv, samples_per_label=4, seed=3).train.inputs
    again = _load(sentiment_csv, samples_per_label=4, seed=3).train.inputs
    assert first == again
    # The validation split moves with the seed of user data too, so compare sampled sets of
    # several seeds: they must not all be the same.
    samples = {tuple(_load(sentiment_csv, samples_per_label=4, seed=s).train.inputs) for s in range(4)}
    assert len(samples) > 1


def test_other_seed_other_sample_on_a_fixed_split(sentiment_csv: Path, tmp_path: Path) -> None:
    """With a validation file the pool is the same for every seed; only the sample moves."""
    validation_csv = tmp_path / "validation.csv"
    sentiment_frame(20, seed=5).to_csv(validation_csv, index=False)
    kwargs = {"validation_file": str(validation_csv), "samples_per_label": 4}
    a = load_data(FinetuneConfig(train_file=str(sentiment_csv), seed=0, **kwargs))
    b = load_data(FinetuneConfig(train_file=str(sentiment_csv), seed=1, **kwargs))
    assert set(a.train.inputs) != set(b.train.inputs)
    assert a.validation.inputs == b.validation.inputs


def test_smaller_k_is_nested_in_larger_k(sentiment_csv: Path) -> None:
    small = set(_load(sentiment_csv, samples_per_label=3, seed=2).train.inputs)
    large = set(_load(sentiment_csv, samples_per_label=6, seed=2).train.inputs)
    assert small < large


def test_label_with_too_few_examples_keeps_all_and_warns(
    unbalanced_csv: Path, caplog: pytest.LogCaptureFixture
) -> None:
    validation = unbalanced_csv.with_name("validation.csv")
    pd.DataFrame({"text": ["good one", "bad one", "so so"], "label": ["pos", "neg", "neu"]}).to_csv(
        validation, index=False
    )
    with caplog.at_level(logging.WARNING):
        config = FinetuneConfig(
            train_file=str(unbalanced_csv), validation_file=str(validation), samples_per_label=8
        )
        data = load_data(config)
    assert _label_counts(data) == {"neg": 8, "pos": 8, "neu": 3}
    assert "label 'neu' has only 3 training examples" in caplog.text


def test_builtin_split_sizes_do_not_move() -> None:
    data = load_data(FinetuneConfig(samples_per_label=8, seed=0))
    assert _label_counts(data) == {"fresh": 8, "rotten": 8}
    assert (len(data.validation), len(data.test)) == (1275, 1276)


BAD_SETTINGS = [{"samples_per_label": 0}, {"samples_per_label": 4, "max_train_examples": 10}]


@pytest.mark.parametrize("bad", BAD_SETTINGS)
def test_invalid_settings_are_rejected(bad: dict[str, int]) -> None:
    with pytest.raises(ConfigError, match="samples_per_label"):
        FinetuneConfig(**bad)


def test_command_line_flag() -> None:
    config = parse_config(FinetuneConfig, ["--samples_per_label", "16", "--seed", "2"])
    assert (config.samples_per_label, config.seed) == (16, 2)
