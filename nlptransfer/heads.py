"""Classification heads on pooled features."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nlptransfer.registry import Registry

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
    """Rebuild a head from its saved config (a registry name plus its arguments)."""
    kwargs = {k: v for k, v in config.items() if k != "type"}
    return HEADS.get(config["type"])(**kwargs)
