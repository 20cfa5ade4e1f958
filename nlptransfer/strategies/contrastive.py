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

# The end-to-end phase: the head at this rate over the body's, for this many epochs; the head and
# body move together from the fitted head, as in LP-FT.
END_TO_END_HEAD_SCALE = 100.0
END_TO_END_EPOCHS = 10


@STRATEGIES.register("contrastive")
class Contrastive(Strategy):
    """Best with a handful of labelled examples per class.

    Phase 1 trains the body (``--unfreeze_layers`` to limit it: the frozen bottom then runs once,
    on the activation cache) to give same-class texts similar embeddings, on the pairs
    ``--pair_sampling`` names. Phase 2 fits the head on the tuned body's frozen features, by default
    a cross-validated logistic regression (``--head linear`` for a trained one). ``--end_to_end``
    adds phase 3: a linear head and the same body layers trained together on the labels.
    """

    name = "contrastive"
    # Pairs drawn up front: SetFit's rate and one epoch over them.
    default_learning_rate = 2e-5
    default_epochs = 1
    # In-batch pairs: an epoch is one pass over the examples, so many more epochs, each a few large
    # steps (every pair of --pair_batch_size examples), at a higher rate. Measured on the movie
    # reviews at 8, 16 and 64 examples per label (docs/few-shot.md): 8 epochs at 1e-4 in steps of 16
    # examples; steps of 32 matched at 8 and 16 per label and were 0.8 point behind at 64.
    in_batch_learning_rate = 1e-4
    in_batch_epochs = 8
    fixed_schedule = True

    def learning_rate(self, config: FinetuneConfig) -> float:
        if config.learning_rate is None and config.pair_sampling == "in-batch":
            return self.in_batch_learning_rate
        return super().learning_rate(config)

    def epochs(self, config: FinetuneConfig) -> int:
        if config.epochs is None and config.pair_sampling == "in-batch":
            return self.in_batch_epochs
        return super().epochs(config)

    def configure(self, model: nn.Module, config: FinetuneConfig) -> ParamGroups:
        body = unfreeze_top(model, config.unfreeze_layers)
        model.head.requires_grad_(False)  # the pair loss never reaches the head
        lr = self.learning_rate(config)
        return layerwise_groups(model, body, lr, lr, 1.0, config.weight_decay)

    def configure_end_to_end(self, model: nn.Module, config: FinetuneConfig) -> ParamGroups:
        body = unfreeze_top(model, config.unfreeze_layers)
        lr = self.learning_rate(config)
        return layerwise_groups(model, body, lr * END_TO_END_HEAD_SCALE, lr, 1.0, config.weight_decay)

    def phases(self, model: nn.Module, config: FinetuneConfig) -> list[Phase]:
        loop = "contrastive-in-batch" if config.pair_sampling == "in-batch" else "contrastive"
        pairs = Phase("contrastive", lambda m: self.configure(m, config), self.epochs(config), loop=loop,
                      evaluate=False)  # fmt: skip
        if not config.end_to_end:
            return [pairs, head_phase("head", config, default_head="logistic-cv")]
        return [
            pairs,
            head_phase("head", config, default_head="linear"),
            Phase("end-to-end", lambda m: self.configure_end_to_end(m, config), END_TO_END_EPOCHS,
                  patience=self.patience(config)),
        ]  # fmt: skip
