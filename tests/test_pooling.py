"""Pooling ignores padding and concatenates several layers."""

from __future__ import annotations

import pytest
import torch

from nlptransfer.backbones import BackboneOutput
from nlptransfer.errors import ConfigError, UnknownNameError
from nlptransfer.model.pooling import Pooling

HIDDEN = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]]])  # last token is padding
MASK = torch.tensor([[1, 1, 0]])


def _output(states: tuple[torch.Tensor, ...] | None = None) -> BackboneOutput:
    return BackboneOutput(last_hidden_state=HIDDEN, attention_mask=MASK, hidden_states=states)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("cls", [1.0, 2.0]), ("mean", [2.0, 3.0]), ("max", [3.0, 4.0]), ("last", [3.0, 4.0])],
)
def test_pooling_modes_ignore_padding(mode: str, expected: list[float]) -> None:
    assert Pooling(mode)(_output()).tolist() == [expected]


def test_several_layers_are_concatenated_in_order() -> None:
    states = (HIDDEN * 0, HIDDEN * 2, HIDDEN)
    pooled = Pooling("mean", layers=[1, -1])(_output(states))
    assert pooled.tolist() == [[4.0, 6.0, 2.0, 3.0]]
    assert Pooling("mean", layers=[1, -1]).output_dim(2) == 4


def test_missing_layer_index_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="do not exist"):
        Pooling("mean", layers=[5])(_output((HIDDEN, HIDDEN)))


def test_unknown_pooling_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="cls, last, max, mean"):
        Pooling("avg")


def test_last_token_is_right_under_left_and_right_padding() -> None:
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert Pooling("last")(BackboneOutput(hidden, right)).flatten().tolist() == [1.0, 7.0]
    assert Pooling("last")(BackboneOutput(hidden, left)).flatten().tolist() == [3.0, 7.0]


def test_scalar_mix_is_a_softmax_weighted_sum_times_gamma() -> None:
    states = (HIDDEN * 0, HIDDEN * 2, HIDDEN)
    pooling = Pooling("mean", layers=[0, 1, 2], mix="scalar")
    assert pooling.output_dim(2) == 2
    # Equal weights at start: the mean of the pooled layers.
    assert torch.allclose(pooling(_output(states)), torch.tensor([[2.0, 3.0]]))
    with torch.no_grad():
        pooling.mix.weights.copy_(torch.tensor([0.0, 100.0, 0.0]))
        pooling.mix.gamma.fill_(0.5)
    assert torch.allclose(pooling(_output(states)), torch.tensor([[2.0, 3.0]]))  # 0.5 * layer 1
    assert {n for n, _ in pooling.named_parameters()} == {"mix.weights", "mix.gamma"}


def test_pool_then_combine_equals_forward() -> None:
    states = (HIDDEN * 0, HIDDEN * 2, HIDDEN)
    for mix in ("concat", "scalar"):
        pooling = Pooling("mean", layers=[1, 2], mix=mix)
        pooled = pooling.pool_layers(_output(states))
        assert pooled.shape == (1, 2, 2)
        assert torch.equal(pooling.combine(pooled), pooling(_output(states)))
