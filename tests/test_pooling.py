"""Pooling ignores padding and concatenates several layers."""

from __future__ import annotations

import pytest
import torch

from nlptransfer.backbones import BackboneOutput
from nlptransfer.errors import ConfigError, UnknownNameError
from nlptransfer.pooling import Pooling

HIDDEN = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]]])  # last token is padding
MASK = torch.tensor([[1, 1, 0]])


def _output(states: tuple[torch.Tensor, ...] | None = None) -> BackboneOutput:
    return BackboneOutput(last_hidden_state=HIDDEN, attention_mask=MASK, hidden_states=states)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("cls", [1.0, 2.0]), ("mean", [2.0, 3.0]), ("max", [3.0, 4.0])],
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
    with pytest.raises(UnknownNameError, match="cls, max, mean"):
        Pooling("avg")
