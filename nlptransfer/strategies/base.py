"""The Strategy interface: decide what trains, and at which learning rate."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from nlptransfer.backbones.base import LayerGroup
from nlptransfer.config import FinetuneConfig
from nlptransfer.errors import ConfigError
from nlptransfer.registry import Registry

ParamGroups = list[dict[str, Any]]

# Training loops a phase can ask for (implemented in nlptransfer.engine.fit and friends).
LOOPS = ("gradient", "logistic-cv", "ridge-cv", "contrastive")
# Heads fitted in closed form on frozen features (scikit-learn); each is also a loop of that name.
CLOSED_FORM_HEADS = ("logistic-cv", "ridge-cv")


@dataclass
class Phase:
    """One stage of a strategy: what trains, how, for how long.

    Single-stage strategies have one phase; LP-FT, gradual unfreezing and
    contrastive few-shot chain several. ``configure`` runs at the start of the
    phase (and once up front, to validate and to report the trainable layers).
    """

    name: str
    configure: Callable[[nn.Module], ParamGroups]
    epochs: int
    freezes_body: bool = False
    patience: int | None = None
    loop: str = "gradient"
    # False for phases whose model has no usable head yet (contrastive body training).
    evaluate: bool = True

    @property
    def closed_form(self) -> bool:
        """A head fitted in one solve (no epochs, no learning rate)."""
        return self.loop in CLOSED_FORM_HEADS


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
    # True when its epochs are not passes whose number should grow as data shrinks (contrastive pair
    # epochs are tuned for few examples): auto and the advisor keep its default epochs and batch.
    fixed_schedule: bool = False

    def freezes_body(self, config: FinetuneConfig) -> bool:
        return False

    @abstractmethod
    def configure(self, model: nn.Module, config: FinetuneConfig) -> ParamGroups:
        """Freeze / unfreeze parameters of ``model``; return optimizer groups.

        Must be idempotent: the runner configures every phase once up front (to
        validate and report the trainable layers) and again when the phase starts.
        """

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

    def phases(self, model: nn.Module, config: FinetuneConfig) -> list[Phase]:
        """The stages of this strategy; one by default."""
        frozen = self.freezes_body(config)
        if config.head in CLOSED_FORM_HEADS:
            return [
                head_phase(
                    self.name, config, frozen_body=frozen, configure=lambda m: self.configure(m, config)
                )
            ]
        return [
            Phase(
                self.name,
                lambda m: self.configure(m, config),
                self.epochs(config),
                freezes_body=frozen,
                patience=self.patience(config),
            )
        ]


def head_phase(
    name: str, config: FinetuneConfig, frozen_body: bool = True,
    configure: Callable[[nn.Module], ParamGroups] | None = None, lr: float = 1e-3, epochs: int = 30,
    patience: int | None = 5, default_head: str = "linear",
) -> Phase:  # fmt: skip
    """A phase that trains only the head (and layer mix) on frozen features, by --head's method."""
    head = config.head or default_head
    if head in CLOSED_FORM_HEADS:
        if not frozen_body:
            raise ConfigError(
                f"--head {head} fits on frozen features; use it with feature-extraction, "
                "contrastive, or finetune --unfreeze_layers 0, or drop it (linear head)."
            )
        return Phase(name, configure or train_head_only(lr, config.weight_decay), 1, True, loop=head)
    return Phase(name, configure or train_head_only(lr, config.weight_decay), epochs, True, patience=patience)


def train_head_only(lr: float, weight_decay: float) -> Callable[[nn.Module], ParamGroups]:
    def configure(model: nn.Module) -> ParamGroups:
        unfreeze_top(model, 0)
        return param_groups(model.new_parameters(), lr, weight_decay)

    return configure


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


def unfreeze_top(model: nn.Module, k: int | None) -> list[LayerGroup]:
    """Freeze the body except its top ``k`` blocks (all of it when ``k`` is None).

    Returns the trainable body groups, bottom to top. The head and layer mix
    always train. Blocks above the highest pooled layer get no gradient;
    trainable, they would break DistributedDataParallel, so they stay frozen.
    """
    backbone = model.backbone
    groups = backbone.layer_groups()
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
    for _, param in model.new_parameters():
        param.requires_grad_(True)
    return [g for g in groups if any(p.requires_grad for _, p in g.parameters)]


def layerwise_groups(
    model: nn.Module, body: list[LayerGroup], head_lr: float, body_lr: float, decay: float,
    weight_decay: float,
) -> ParamGroups:  # fmt: skip
    """Head at ``head_lr``; body group at depth d from the top at ``body_lr * decay**d``.

    The final norm shares the top block's rate; embeddings sit one step below the lowest block.
    """
    groups = param_groups(model.new_parameters(), head_lr, weight_decay)
    depth = -1
    for group in reversed(body):
        if group.kind != "final":
            depth += 1
        groups += param_groups(group.parameters, body_lr * decay ** max(depth, 0), weight_decay)
    return groups


STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


def get_strategy(name: str) -> Strategy:
    return STRATEGIES.get(name)()
