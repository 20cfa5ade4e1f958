"""What ``nlptransfer tune`` searches: the options each strategy exposes, with their ranges.

Options given on the command line are fixed, never searched. The ranges are the usual ones of
each method (the learning rate from a tenth to ten times its default, LoRA ranks 4-32, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nlptransfer.config import FinetuneConfig

CLOSED_FORM = ("logistic-cv", "ridge-cv")


@dataclass(frozen=True)
class Param:
    """One searched option: a float (log scale or not), an int range, or a set of choices."""

    name: str
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


def search_space(config: FinetuneConfig, num_blocks: int, given: set[str]) -> list[Param]:
    """The options of ``config.strategy`` (and its head) worth searching, minus those in ``given``."""
    strategy = config.strategy
    frozen_head = strategy in ("feature-extraction", "contrastive") and config.head in CLOSED_FORM
    space: list[Param] = []
    if strategy == "feature-extraction":
        # The closed-form head chooses its own regularisation: what is left is what it reads.
        space += [Param("pooling", choices=("mean", "cls", "max")),
                  Param("top_layers", 1, max(1, min(num_blocks, 6)), integer=True)]  # fmt: skip
    if not frozen_head:
        space += [Param("learning_rate", *_rate_range(strategy), log=True),
                  Param("epochs", *_epoch_range(strategy), integer=True)]  # fmt: skip
    if strategy == "feature-extraction" and not frozen_head:
        space.append(Param("head_dropout", 0.0, 0.5))
    if strategy in ("finetune", "lp-ft", "gradual-unfreezing", "layerwise-lr-decay"):
        space += [Param("body_lr_scale", 0.03, 1.0, log=True), Param("warmup_ratio", 0.0, 0.2)]
    if strategy == "finetune" and num_blocks > 1:
        space.append(Param("unfreeze_layers", 1, num_blocks, integer=True))
    if strategy in ("layerwise-lr-decay", "gradual-unfreezing"):
        space.append(Param("layer_lr_decay", 0.6, 1.0))
    if strategy in ("lora", "loha"):
        space += [Param("lora_r", choices=(4, 8, 16, 32)), Param("lora_dropout", 0.0, 0.3)]
    if strategy == "contrastive":
        space.append(Param("contrastive_iterations", 5, 40, integer=True))
    return [p for p in space if p.name not in given and not (p.name == "top_layers" and "layers" in given)]


def apply(params: dict[str, Any], num_blocks: int) -> dict[str, Any]:
    """Searched values as run options (``top_layers`` K is ``--layers -K ... -1``; a LoRA alpha
    follows its rank, as peft's examples set it: alpha = 2 r)."""
    options = dict(params)
    if "top_layers" in options:
        k = options.pop("top_layers")
        options["layers"] = list(range(-k, 0))
        options["layer_mix"] = "concat"
    if "lora_r" in options:
        options["lora_alpha"] = 2 * options["lora_r"]
    if options.get("unfreeze_layers") == num_blocks:
        options["unfreeze_layers"] = None  # every layer: the plain fine-tune
    return options


def _rate_range(strategy: str) -> tuple[float, float]:
    """Two decades around the strategy's default rate (for finetune: the head's; the body's follows)."""
    from nlptransfer.strategies import get_strategy  # torch: only once the search runs

    default = get_strategy(strategy).default_learning_rate
    return default / 10, default * 10


def _epoch_range(strategy: str) -> tuple[int, int]:
    from nlptransfer.strategies import get_strategy

    default = get_strategy(strategy).default_epochs
    return (10, 60) if strategy == "feature-extraction" else (1, max(8, 2 * default))
