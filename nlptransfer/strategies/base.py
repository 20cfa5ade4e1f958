"""The Strategy interface: decide what trains, and at which learning rate."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from torch import nn

from nlptransfer.config import FinetuneConfig
from nlptransfer.registry import Registry

ParamGroups = list[dict[str, Any]]


class Strategy(ABC):
    """A way to transfer a pretrained body to a new task.

    ``configure`` sets ``requires_grad`` on the model and returns optimizer
    parameter groups. When ``freezes_body`` is true nothing backpropagates into
    the body, so the trainer computes body features once instead of every epoch.
    """

    name: str = ""
    default_learning_rate: float = 1e-3
    default_epochs: int = 3
    default_patience: int | None = None
    # Pool and concatenate this many top layers unless --layers says otherwise.
    default_top_layers: int = 1

    def freezes_body(self, config: FinetuneConfig) -> bool:
        return False

    @abstractmethod
    def configure(self, model: nn.Module, config: FinetuneConfig) -> ParamGroups:
        """Freeze / unfreeze parameters of ``model``; return optimizer groups."""

    def learning_rate(self, config: FinetuneConfig) -> float:
        return config.learning_rate if config.learning_rate is not None else self.default_learning_rate

    def epochs(self, config: FinetuneConfig) -> int:
        return config.epochs if config.epochs is not None else self.default_epochs

    def layers(self, config: FinetuneConfig, num_blocks: int) -> list[int] | str:
        """Hidden layers to pool: ``--layers`` (indices or ``all``), else the top ones that exist."""
        if config.layers:
            return "all" if config.layers == ["all"] else [int(i) for i in config.layers]
        return list(range(-min(self.default_top_layers, max(num_blocks, 1)), 0))

    def patience(self, config: FinetuneConfig) -> int | None:
        if config.early_stopping_patience is not None:
            return config.early_stopping_patience
        return self.default_patience


def param_groups(named_params: list[tuple[str, nn.Parameter]], lr: float, weight_decay: float) -> ParamGroups:
    """AdamW groups at one learning rate; biases and norm weights get no weight decay."""
    trainable = [(n, p) for n, p in named_params if p.requires_grad]
    no_decay = [p for n, p in trainable if p.ndim < 2]
    decay = [p for n, p in trainable if p.ndim >= 2]
    groups = [
        {"params": decay, "lr": lr, "weight_decay": weight_decay},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


def get_strategy(name: str) -> Strategy:
    return STRATEGIES.get(name)()
