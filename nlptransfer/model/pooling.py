"""Pooling: per-layer token states -> one vector per example.

Two stages, so frozen bodies can cache the first one:

1. ``pool_layers``: each selected hidden layer (batch, tokens, hidden) is pooled
   over tokens by a registered function (cls, mean, max, last) into
   (batch, layers, hidden). No parameters.
2. ``combine``: (batch, layers, hidden) -> (batch, features), either by
   concatenation or by an ELMo-style learned scalar mix (trainable).
"""

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
MIXES = ("concat", "scalar")


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


@POOLINGS.register("last")
def last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The last real token's state (GPT-style decoders), for left or right padding."""
    last = mask.shape[1] - 1 - mask.flip(1).to(torch.long).argmax(1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def _mask_for(state: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The attention mask of one hidden state. Image stages shrink the feature map from
    stage to stage (fewer positions than the top one), and every position is real."""
    if state.shape[1] == mask.shape[1]:
        return mask
    return mask.new_ones(state.shape[:2])


class ScalarMix(nn.Module):
    """ELMo's learned layer mix: gamma * sum_k softmax(w)_k * layer_k."""

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_layers))
        self.gamma = nn.Parameter(torch.ones(()))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        mix = torch.softmax(self.weights, dim=0).to(pooled.dtype)
        return self.gamma * torch.einsum("blh,l->bh", pooled, mix)


class Pooling(nn.Module):
    """Pool one or more hidden layers and combine them into one feature vector.

    ``layers`` index the backbone's hidden states (0 = embeddings, -1 = top).
    ``mix="concat"`` concatenates the pooled layers (the last four: the BERT
    paper's best feature-based setup); ``mix="scalar"`` learns ELMo's softmax-
    weighted sum, which keeps the feature size of one layer.
    """

    def __init__(self, mode: str = "mean", layers: Sequence[int] = (-1,), mix: str = "concat") -> None:
        super().__init__()
        if not layers:
            raise ConfigError("Pooling needs at least one layer index, e.g. --layers -1.")
        if mix not in MIXES:
            raise ConfigError(f"Unknown layer mix '{mix}'; valid: {', '.join(MIXES)}.")
        self.mode = mode
        self.layers = [int(i) for i in layers]
        self.fn = POOLINGS.get(mode)
        self.mix_mode = mix
        self.mix = ScalarMix(len(self.layers)) if mix == "scalar" else None

    @property
    def needs_hidden_states(self) -> bool:
        return self.layers != [-1]

    def output_dim(self, hidden_size: int) -> int:
        return hidden_size if self.mix is not None else hidden_size * len(self.layers)

    def check_layers(self, num_states: int) -> None:
        bad = [i for i in self.layers if not -num_states <= i < num_states]
        if bad:
            raise ConfigError(
                f"Layer indices {bad} do not exist: this model has {num_states} hidden states "
                f"(0 = embeddings ... {num_states - 1} = top, or -1 ... -{num_states})."
            )

    def pool_layers(self, output: BackboneOutput) -> torch.Tensor:
        """(batch, layers, hidden): every selected layer pooled over its tokens."""
        if not self.needs_hidden_states:
            return self.fn(output.last_hidden_state, output.attention_mask).unsqueeze(1)
        states = output.hidden_states
        assert states is not None  # TransferModel asks for them when needs_hidden_states
        self.check_layers(len(states))
        pooled = [self.fn(states[i], _mask_for(states[i], output.attention_mask)) for i in self.layers]
        widths = {p.shape[-1] for p in pooled}
        if len(widths) > 1:
            raise ConfigError(
                f"Layers {self.layers} have different widths {sorted(widths)} and cannot be combined; "
                "pool one layer (--layers -1)."
            )
        return torch.stack(pooled, dim=1)

    def combine(self, pooled: torch.Tensor) -> torch.Tensor:
        """(batch, layers, hidden) -> (batch, features)."""
        if self.mix is not None:
            return self.mix(pooled)
        return pooled.flatten(1)

    def forward(self, output: BackboneOutput) -> torch.Tensor:
        return self.combine(self.pool_layers(output))

    def get_config(self) -> dict[str, Any]:
        return {"type": self.mode, "layers": self.layers, "mix": self.mix_mode}


WINDOW_POOLING = ("mean", "max")


def pool_windows(
    features: torch.Tensor, owner: torch.Tensor, mode: str = "mean", texts: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-window features (windows, ...) pooled into one row per text (texts, ...): ``owner[w]``
    is the text of window ``w``; every text has at least one window. ``texts`` (0, 1, ..., T-1)
    defaults to one per owner; given as an input, an exported graph knows how many texts there are
    without reading ``owner``'s values (a shape that depends on data does not export)."""
    if texts is None:
        texts = torch.arange(int(owner.max()) + 1 if len(owner) else 0, device=owner.device)
    member = owner.unsqueeze(0) == texts.unsqueeze(1)  # (texts, windows)
    flat = features.flatten(1)
    if mode == "max":
        hidden = flat.new_tensor(float("-inf"))
        pooled = torch.where(member.unsqueeze(-1), flat.unsqueeze(0), hidden).amax(dim=1)
    else:
        weights = member.to(flat.dtype)
        pooled = (weights @ flat) / weights.sum(dim=1, keepdim=True).clamp(min=1)
    return pooled.view(-1, *features.shape[1:])
