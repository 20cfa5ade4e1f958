"""Learning-rate schedules (warmup, linear, cosine, constant, slanted triangular) and their options."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch

from nlptransfer.config import LR_SCHEDULERS, FinetuneConfig, parse_config
from nlptransfer.engine.schedules import SCHEDULES, build_schedule
from nlptransfer.errors import ConfigError, UnknownNameError

PEAK = 0.1


def _optimizer(lr: float = PEAK) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def _lrs(name: str, warmup: int, total: int, ratio: float = 32.0, steps: int | None = None) -> list[float]:
    """The learning rate in effect at steps 0, 1, ..., ``steps`` (default ``total``)."""
    optimizer = _optimizer()
    schedule = build_schedule(name, optimizer, warmup, total, ratio)
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(total if steps is None else steps):
        optimizer.step()
        schedule.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def test_registry_holds_the_four_schedules_the_config_accepts() -> None:
    assert SCHEDULES.names() == ["constant", "cosine", "linear", "slanted-triangular"]
    assert sorted(LR_SCHEDULERS) == SCHEDULES.names()


@pytest.mark.parametrize("name", ["linear", "cosine", "constant"])
def test_warmup_rises_to_the_peak_at_warmup_steps(name: str) -> None:
    lrs = _lrs(name, warmup=10, total=100)
    rising = lrs[:11]
    assert all(a < b for a, b in pairwise(rising)), rising
    # transformers' warmup: step / warmup, so step 0 has LR 0 (the same runs as its schedules).
    assert lrs[0] == 0.0
    assert lrs[9] == pytest.approx(PEAK * 9 / 10)
    assert lrs[10] == pytest.approx(PEAK)
    assert max(lrs) == pytest.approx(PEAK)


def test_linear_decays_to_zero_at_total() -> None:
    lrs = _lrs("linear", warmup=10, total=100)
    assert lrs[55] == pytest.approx(PEAK * 0.5)
    assert lrs[82] == pytest.approx(PEAK * 18 / 90)
    assert lrs[100] == pytest.approx(0.0, abs=1e-12)
    decay = lrs[10:]
    assert all(a > b for a, b in pairwise(decay))


def test_linear_stays_at_zero_after_total() -> None:
    lrs = _lrs("linear", warmup=2, total=10, steps=14)
    assert lrs[10:] == [0.0] * 5


def test_cosine_is_half_the_peak_halfway_and_zero_at_the_end() -> None:
    lrs = _lrs("cosine", warmup=10, total=110)
    assert lrs[60] == pytest.approx(0.5 * PEAK)
    assert lrs[35] == pytest.approx(PEAK * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lrs[85] == pytest.approx(PEAK * 0.5 * (1 + math.cos(3 * math.pi / 4)))
    assert lrs[110] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in pairwise(lrs[10:]))


def test_constant_stays_at_the_peak_after_warmup() -> None:
    lrs = _lrs("constant", warmup=5, total=20, steps=30)
    assert lrs[5:] == pytest.approx([PEAK] * 26)
    assert lrs[4] < PEAK


def test_constant_without_warmup_starts_at_the_peak() -> None:
    assert _lrs("constant", warmup=0, total=5) == pytest.approx([PEAK] * 6)


def test_slanted_triangular_follows_ulmfit_eq3() -> None:
    # T = 100, cut = 10, ratio = 32: lr = peak (1 + p (ratio - 1)) / ratio.
    lrs = _lrs("slanted-triangular", warmup=10, total=100, ratio=32.0)
    assert lrs[0] == pytest.approx(PEAK / 32)
    assert lrs[5] == pytest.approx(PEAK * (1 + 0.5 * 31) / 32)  # p = 5 / 10
    assert lrs[10] == pytest.approx(PEAK)  # p = 1 at the cut
    assert lrs[55] == pytest.approx(PEAK * (1 + 0.5 * 31) / 32)  # p = 1 - 45 / 90
    assert lrs[91] == pytest.approx(PEAK * (1 + 0.1 * 31) / 32)  # p = 1 - 81 / 90
    assert lrs[100] == pytest.approx(PEAK / 32)
    assert max(lrs) == pytest.approx(PEAK) and lrs.index(max(lrs)) == 10
    assert min(lrs) == pytest.approx(PEAK / 32)
    assert all(a < b for a, b in pairwise(lrs[:11]))
    assert all(a > b for a, b in pairwise(lrs[10:]))


def test_slanted_triangular_ratio_sets_the_lowest_rate() -> None:
    lrs = _lrs("slanted-triangular", warmup=4, total=20, ratio=4.0)
    assert lrs[0] == pytest.approx(PEAK / 4)
    assert lrs[2] == pytest.approx(PEAK * (1 + 0.5 * 3) / 4)
    assert lrs[4] == pytest.approx(PEAK)
    assert lrs[20] == pytest.approx(PEAK / 4)


@pytest.mark.parametrize("name", ["linear", "cosine", "constant", "slanted-triangular"])
def test_state_dict_round_trips(name: str) -> None:
    optimizer = _optimizer()
    schedule = build_schedule(name, optimizer, 4, 20, 8.0)
    for _ in range(7):
        optimizer.step()
        schedule.step()
    saved = schedule.state_dict()
    optimizer.step()
    schedule.step()
    expected = optimizer.param_groups[0]["lr"]

    fresh_optimizer = _optimizer()
    fresh = build_schedule(name, fresh_optimizer, 4, 20, 8.0)
    unloaded_next = _lrs(name, 4, 20, 8.0, steps=1)[1]
    fresh.load_state_dict(saved)
    fresh_optimizer.step()
    fresh.step()
    assert fresh_optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    assert fresh.last_epoch == 8
    assert unloaded_next != pytest.approx(expected)  # loading the state is what made them equal


def test_unknown_schedule_lists_the_valid_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        build_schedule("cosin", _optimizer(), 1, 10)
    message = str(info.value)
    assert "cosin'" in message
    assert "constant, cosine, linear, slanted-triangular" in message
    assert "Did you mean 'cosine'" in message
    assert isinstance(info.value, ConfigError)


# ---------------------------------------------------------------- configuration


def test_config_rejects_an_unknown_scheduler_naming_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="linear, cosine, constant, slanted-triangular"):
        FinetuneConfig(lr_scheduler="triangular")
    with pytest.raises(ConfigError, match="Did you mean 'cosine'"):
        parse_config(FinetuneConfig, ["--lr_scheduler", "cosin"])


def test_config_accepts_every_registered_scheduler() -> None:
    for name in SCHEDULES.names():
        assert parse_config(FinetuneConfig, ["--lr_scheduler", name]).lr_scheduler == name


@pytest.mark.parametrize(
    ("options", "warmup"),
    [
        ({}, 0.06),
        ({"lr_scheduler": "cosine"}, 0.06),
        ({"lr_scheduler": "constant"}, 0.06),
        ({"lr_scheduler": "slanted-triangular"}, 0.1),
        ({"lr_scheduler": "slanted-triangular", "warmup_ratio": 0.2}, 0.2),
        ({"lr_scheduler": "linear", "warmup_ratio": 0.3}, 0.3),
        ({"warmup_ratio": 0.0}, 0.0),
    ],
)
def test_warmup_fraction(options: dict, warmup: float) -> None:
    assert FinetuneConfig(**options).warmup == warmup


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"stlr_ratio": 0.5}, "--stlr_ratio must be at least 1"),
        ({"save_steps": -1}, "--save_steps must be >= 0"),
        ({"save_total_limit": -2}, "--save_total_limit must be >= 0"),
        ({"logging_steps": 0}, "--logging_steps must be at least 1"),
        ({"warmup_ratio": 1.5}, "--warmup_ratio must be between"),
        ({"report_to": ["jsonl", "wandbb"]}, "--report_to takes jsonl, tensorboard, .*; got wandbb"),
    ],
)
def test_invalid_training_options(options: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        FinetuneConfig(**options)


def test_boundary_values_are_accepted() -> None:
    config = FinetuneConfig(stlr_ratio=1.0, save_steps=0, save_total_limit=0, logging_steps=1)
    assert (config.stlr_ratio, config.save_steps, config.save_total_limit) == (1.0, 0, 0)


@pytest.mark.parametrize(
    ("report_to", "trackers"),
    [
        (["jsonl", "tensorboard"], ["jsonl", "tensorboard"]),
        (["none"], []),
        (["jsonl", "none"], []),
        (["tensorboard", "jsonl", "tensorboard"], ["tensorboard", "jsonl"]),
        (["jsonl"], ["jsonl"]),
    ],
)
def test_trackers(report_to: list[str], trackers: list[str]) -> None:
    assert FinetuneConfig(report_to=report_to).trackers == trackers


def test_report_to_none_from_the_command_line() -> None:
    assert parse_config(FinetuneConfig, ["--report_to", "none"]).trackers == []
    assert FinetuneConfig().trackers == ["jsonl", "tensorboard"]


@pytest.mark.parametrize("name", ["linear", "cosine", "constant"])
def test_schedules_match_transformers(name: str) -> None:
    import transformers

    reference = {
        "linear": transformers.get_linear_schedule_with_warmup,
        "cosine": transformers.get_cosine_schedule_with_warmup,
        "constant": lambda opt, warmup, total: transformers.get_constant_schedule_with_warmup(opt, warmup),
    }[name]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=PEAK)
    schedule = reference(optimizer, 7, 50)
    expected = []
    for _ in range(50):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert _lrs(name, warmup=7, total=50)[:50] == pytest.approx(expected)
