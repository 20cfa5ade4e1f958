"""Contrastive few-shot: tune the body on sentence pairs, then fit a head (SetFit's recipe)."""

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


@STRATEGIES.register("contrastive")
class Contrastive(Strategy):
    """Best with a handful of labelled examples per class.

    Phase 1 trains the body (``--unfreeze_layers`` to limit it) on pairs
    labelled same / different class with a cosine-similarity loss,
    ``--contrastive_iterations`` pairs per example, at most ``--max_pairs``.
    Phase 2 fits the head on the tuned body's frozen features, by default a
    cross-validated logistic regression (``--head linear`` for a trained one).
    """

    name = "contrastive"
    default_learning_rate = 2e-5  # the body's, as in SetFit
    default_epochs = 1

    def configure(self, model: nn.Module, config: FinetuneConfig) -> ParamGroups:
        body = unfreeze_top(model, config.unfreeze_layers)
        model.head.requires_grad_(False)  # the pair loss never reaches the head
        lr = self.learning_rate(config)
        return layerwise_groups(model, body, lr, lr, 1.0, config.weight_decay)

    def phases(self, model: nn.Module, config: FinetuneConfig) -> list[Phase]:
        return [
            Phase("contrastive", lambda m: self.configure(m, config), self.epochs(config), loop="contrastive",
                  evaluate=False),
            head_phase("head", config, default_head="logistic-cv"),
        ]  # fmt: skip
