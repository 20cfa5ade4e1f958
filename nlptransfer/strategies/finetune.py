"""Fine-tuning: all body layers, or only the top K, with a reduced body learning rate."""

from __future__ import annotations

from torch import nn

from nlptransfer.config import FinetuneConfig
from nlptransfer.errors import ConfigError
from nlptransfer.strategies.base import STRATEGIES, ParamGroups, Strategy, param_groups


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
        backbone = model.backbone
        groups = backbone.layer_groups()
        k = config.unfreeze_layers
        num_blocks = backbone.num_blocks()
        if k is not None and k > num_blocks:
            raise ConfigError(
                f"--unfreeze_layers {k} exceeds the {num_blocks} layers of this model; "
                f"use a value from 0 to {num_blocks}, or omit it to train all layers."
            )
        backbone.requires_grad_(k is None)
        blocks = [g for g in groups if g.kind == "block"]
        if k:
            for group in blocks[num_blocks - k :] + [g for g in groups if g.kind == "final"]:
                group.set_trainable(True)
        # Blocks above the highest pooled layer get no gradient; trainable, they would
        # break DistributedDataParallel, so they stay frozen.
        top = max(i % (num_blocks + 1) for i in model.pooling.layers)
        if k and num_blocks - k >= top:
            raise ConfigError(
                f"--unfreeze_layers {k} trains blocks {num_blocks - k}..{num_blocks - 1}, but the pooled "
                f"layers {model.pooling.layers} read nothing above block {top - 1}. Unfreeze more layers "
                "or pool a higher layer."
            )
        for group in blocks[top:]:
            group.set_trainable(False)
        if top < num_blocks:
            for group in groups:
                if group.kind == "final":
                    group.set_trainable(False)
        new = model.new_parameters()
        for _, param in new:
            param.requires_grad_(True)
        lr = self.learning_rate(config)
        body = [(n, p) for g in groups for n, p in g.parameters]
        return param_groups(new, lr, config.weight_decay) + param_groups(
            body, lr * config.body_lr_scale, config.weight_decay
        )
