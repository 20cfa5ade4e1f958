"""Discriminative (layer-wise decaying) learning rates, and ULMFiT's gradual unfreezing."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from nlptransfer.config import FinetuneConfig
from nlptransfer.strategies.base import (
    STRATEGIES,
    ParamGroups,
    Phase,
    Strategy,
    head_phase,
    layerwise_groups,
    unfreeze_top,
)
from nlptransfer.strategies.finetune import Finetune

DEFAULT_DECAY = 0.9


def decay(config: FinetuneConfig) -> float:
    return config.layer_lr_decay if config.layer_lr_decay is not None else DEFAULT_DECAY


@STRATEGIES.register("layerwise-lr-decay")
class LayerwiseLRDecay(Finetune):
    """Fine-tuning where each layer below the top trains at ``--layer_lr_decay`` x the rate above it.

    Lower layers hold more general features and should move less (Howard & Ruder
    2018; Sun et al. 2019). ``--unfreeze_layers K`` limits it to the top K layers.
    """

    name = "layerwise-lr-decay"

    def configure(self, model: nn.Module, config: FinetuneConfig) -> ParamGroups:
        body = unfreeze_top(model, config.unfreeze_layers)
        lr = self.learning_rate(config)
        return layerwise_groups(
            model, body, lr, lr * config.body_lr_scale, decay(config), config.weight_decay
        )


@STRATEGIES.register("gradual-unfreezing")
class GradualUnfreezing(Strategy):
    """ULMFiT: train the head first, then unfreeze one more layer group per epoch from the top.

    Phase 0 trains the head on cached features; phase k trains the top k layers
    (with layer-wise decaying rates); the last phase trains everything, and gets
    any epochs left over. ``--epochs`` below the number of phases stops unfreezing early.
    """

    name = "gradual-unfreezing"
    default_learning_rate = 3e-4

    def configure(self, model: nn.Module, config: FinetuneConfig) -> ParamGroups:
        return self.phases(model, config)[-1].configure(model)

    def epochs(self, config: FinetuneConfig) -> int:
        return config.epochs if config.epochs is not None else 0  # 0: one per phase

    def phases(self, model: nn.Module, config: FinetuneConfig) -> list[Phase]:
        num_blocks = model.backbone.num_blocks()
        stages: list[int | None] = [*range(num_blocks + 1), None]  # top k blocks; None = all
        total = self.epochs(config) or len(stages)
        stages = stages[:total]
        lr = self.learning_rate(config)
        phases = [head_phase("head", config, lr=lr, epochs=1, patience=None)]
        for k in stages[1:]:
            label = "all layers" if k is None else f"top {k} layer{'s' * (k > 1)}"
            phases.append(Phase(label, self._unfreeze(k, lr, config), 1))
        phases[-1].epochs += total - len(stages)
        return phases

    @staticmethod
    def _unfreeze(k: int | None, lr: float, config: FinetuneConfig) -> Callable[[nn.Module], ParamGroups]:
        def configure(model: nn.Module) -> ParamGroups:
            body = unfreeze_top(model, k)
            return layerwise_groups(
                model, body, lr, lr * config.body_lr_scale, decay(config), config.weight_decay
            )

        return configure
