"""LP-FT: linear probe first, then fine-tune everything from that head (Kumar et al., ICLR 2022)."""

from __future__ import annotations

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
from nlptransfer.strategies.feature_extraction import FeatureExtraction


@STRATEGIES.register("lp-ft")
class LinearProbeThenFinetune(Strategy):
    """A random head's large early gradients distort pretrained features; a probed head does not.

    Phase 1 trains the head on cached features (feature-extraction's defaults);
    phase 2 trains body and head together at one small rate, ``--learning_rate``
    (default 3e-5), for ``--epochs`` (default 2).
    """

    name = "lp-ft"
    default_learning_rate = 3e-5
    default_epochs = 2

    def configure(self, model: nn.Module, config: FinetuneConfig) -> ParamGroups:
        body = unfreeze_top(model, config.unfreeze_layers)
        lr = self.learning_rate(config)
        return layerwise_groups(model, body, lr, lr, 1.0, config.weight_decay)

    def phases(self, model: nn.Module, config: FinetuneConfig) -> list[Phase]:
        probe = FeatureExtraction
        return [
            head_phase("linear-probe", config, lr=probe.default_learning_rate, epochs=probe.default_epochs,
                       patience=probe.default_patience),
            Phase("finetune", lambda m: self.configure(m, config), self.epochs(config),
                  patience=self.patience(config)),
        ]  # fmt: skip
