"""Pooling: token hidden states (batch, tokens, hidden) -> one vector per example."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from nlptransfer.backbones.base import BackboneOutput
from nlptransfer.errors import ConfigError
from nlptransfer.registry import Registry

PoolFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
POOLINGS: Registry[PoolFn] = Registry("pooling")


@POOLINGS.register("cls")
def cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The first token's state ([CLS] in BERT-style encoders)."""
    return hidden[:, 0]


@POOLINGS.register("mean")
def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average over real tokens only; padding never dilutes the mean."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


@POOLINGS.register("max")
def max_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over real tokens only."""
    masked = hidden.masked_fill(~mask.bool().unsqueeze(-1), torch.finfo(hidden.dtype).min)
    return masked.max(1).values


class Pooling(nn.Module):
    """A registered pooling function over one or more layers, as a module.

    ``layers`` index the backbone's hidden states (0 = embeddings, -1 = top).
    Several layers are pooled separately and concatenated: the feature-based
    setup that worked best in the BERT paper (last four layers), because middle
    layers often transfer better than the top one.
    """

    def __init__(self, mode: str = "mean", layers: Sequence[int] = (-1,)) -> None:
        super().__init__()
        if not layers:
            raise ConfigError("Pooling needs at least one layer index, e.g. --layers -1.")
        self.mode = mode
        self.layers = [int(i) for i in layers]
        self.fn = POOLINGS.get(mode)

    @property
    def needs_hidden_states(self) -> bool:
        return self.layers != [-1]

    def output_dim(self, hidden_size: int) -> int:
        return hidden_size * len(self.layers)

    def forward(self, output: BackboneOutput) -> torch.Tensor:
        if not self.needs_hidden_states:
            return self.fn(output.last_hidden_state, output.attention_mask)
        states = output.hidden_states
        assert states is not None  # encode() asks for them when needs_hidden_states
        self.check_layers(len(states))
        return torch.cat([self.fn(states[i], output.attention_mask) for i in self.layers], dim=-1)

    def check_layers(self, num_states: int) -> None:
        bad = [i for i in self.layers if not -num_states <= i < num_states]
        if bad:
            raise ConfigError(
                f"Layer indices {bad} do not exist: this model has {num_states} hidden states "
                f"(0 = embeddings ... {num_states - 1} = top, or -1 ... -{num_states})."
            )

    def get_config(self) -> dict[str, Any]:
        return {"type": self.mode, "layers": self.layers}
