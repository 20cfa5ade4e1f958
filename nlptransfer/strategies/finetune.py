"""Fine-tuning: all body layers, or only the top K, with a reduced body learning rate."""

from __future__ import annotations

from torch import nn

from nlptransfer.config import FinetuneConfig
from nlptransfer.strategies.base import STRATEGIES, ParamGroups, Strategy, layerwise_groups, unfreeze_top


@STRATEGIES.register("finetune")
class Finetune(Strategy):
    """Top-K layers for small data; all layers at ~1/10 of the head LR as data grows."""

    name = "finetune"
    # Head LR; the body trains at body_lr_scale x this (3e-5 by default, BERT's usual range).
    default_learning_rate = 3e-4
    default_epochs = 2
    default_patience = None

    def freezes_body(self, config: FinetuneConfig) -> bool:
        return config.unfreeze_layers == 0  # head only: train it on cached features

    def configure(self, model: nn.Module, config: FinetuneConfig) -> ParamGroups:
        body = unfreeze_top(model, config.unfreeze_layers)
        lr = self.learning_rate(config)
        return layerwise_groups(model, body, lr, lr * config.body_lr_scale, 1.0, config.weight_decay)
