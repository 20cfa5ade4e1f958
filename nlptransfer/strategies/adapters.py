"""Parameter-efficient fine-tuning (PEFT) through the peft library.

The body stays frozen; peft adds a few trainable parameters to it (low-rank
weight updates for LoRA / LoHa, rescaling vectors for IA3, virtual tokens for
prompt and prefix tuning), and the new head trains with them. The saved model
records the adapter, reloads with ``TransferModel.from_pretrained``, and
LoRA-like adapters merge into plain weights (``nlptransfer merge-adapter``).
"""

from __future__ import annotations

import dataclasses
import logging
from abc import abstractmethod
from typing import TYPE_CHECKING

import torch
from torch import nn

from nlptransfer.backbones import Backbone, HFTextBackbone
from nlptransfer.backbones import peft_adapter as pa
from nlptransfer.config import AdapterOptions, FinetuneConfig
from nlptransfer.errors import ConfigError
from nlptransfer.strategies.base import STRATEGIES, ParamGroups, Strategy, param_groups

if TYPE_CHECKING:
    from peft import PeftConfig

logger = logging.getLogger(__name__)


class AdapterStrategy(Strategy):
    """Freeze the body, add a peft adapter to it, train the adapter and the head."""

    # peft's PeftType value, e.g. "LORA".
    peft_type: str = ""
    default_epochs = 5
    default_patience = 2
    # Whether --unfreeze_layers K can restrict the adapter to the top K blocks (peft's
    # layers_to_transform); the frozen bottom below them then runs once, on the activation cache.
    adapts_top_layers = False

    @abstractmethod
    def peft_config(self, backbone: Backbone, options: AdapterOptions) -> PeftConfig:
        """The peft config of this method for ``backbone``, from the adapter section of the options."""

    def configure(self, model: nn.Module, config: FinetuneConfig) -> ParamGroups:
        if config.unfreeze_layers is not None and not self.adapts_top_layers:
            raise ConfigError(
                f"--unfreeze_layers applies to finetune, contrastive, lora, loha and ia3; {self.name} "
                "trains virtual tokens at the input. Drop the flag."
            )
        backbone = model.backbone
        # Phases configure once up front and again when they start: add the adapter only once.
        existing = pa.adapter_config(backbone)
        if existing is None:
            self._add_adapter(model, config)
        elif existing.peft_type.value != self.peft_type:
            raise ConfigError(
                f"This model already has a {existing.peft_type.value} adapter, not {self.name}."
            )
        backbone.requires_grad_(False)
        trainable = pa.adapter_parameters(backbone)
        if config.unfreeze_layers is not None:
            # IA3 has no layers_to_transform: its vectors below the top K stay at 1 (no change).
            trainable = _in_top_blocks(backbone, trainable, config.unfreeze_layers)
        if backbone.has_untrained_blocks:  # a random BiLSTM / CNN on word vectors must learn everything
            trainable += [(n, p) for g in backbone.block_groups() for n, p in g.parameters]
        for _, param in trainable + model.new_parameters():
            param.requires_grad_(True)
        _freeze_above_pooled(model)
        lr = self.learning_rate(config)
        return param_groups(model.new_parameters() + trainable, lr, config.weight_decay)

    def _add_adapter(self, model: nn.Module, config: FinetuneConfig) -> None:
        peft_config = self.peft_config(model.backbone, config.adapter)
        if config.unfreeze_layers is not None:
            peft_config = _top_layers_only(peft_config, model.backbone, config.unfreeze_layers, self.name)
        pa.apply_adapter(model.backbone, peft_config)
        if not pa.adapter_parameters(model.backbone):
            raise ConfigError(
                f"{self.name} added no trainable parameters to this model; check --target_modules."
            )


def _top_layers_only(config: PeftConfig, backbone: Backbone, k: int, name: str) -> PeftConfig:
    """``config`` with its adapter in the top ``k`` blocks only, where peft can place it so
    (``layers_to_transform``: LoRA, LoHa); IA3's is trained there only (``_in_top_blocks``)."""
    blocks = backbone.num_blocks()
    if not 1 <= k <= blocks:
        raise ConfigError(
            f"--unfreeze_layers {k}: {name} needs at least one of the {blocks} layers of this model to "
            f"adapt; use a value from 1 to {blocks}, or omit it to adapt every layer."
        )
    if not hasattr(config, "layers_to_transform"):
        return config
    if isinstance(config.target_modules, str):
        raise ConfigError(
            f"--unfreeze_layers restricts {name} to the top layers by their index, which peft cannot "
            "combine with --target_modules all-linear; name the modules instead."
        )
    return dataclasses.replace(config, layers_to_transform=list(range(blocks - k, blocks)))


def _in_top_blocks(
    backbone: Backbone, params: list[tuple[str, nn.Parameter]], k: int
) -> list[tuple[str, nn.Parameter]]:
    """The adapter parameters that sit in the top ``k`` blocks."""
    blocks = [g for g in backbone.layer_groups() if g.kind == "block"]
    top = {id(p) for g in blocks[len(blocks) - k :] for _, p in g.parameters}
    return [(n, p) for n, p in params if id(p) in top]


class _LoraLike(AdapterStrategy):
    """Adapters on chosen layers: --target_modules, else peft's per-family default; in the top
    --unfreeze_layers K blocks only when given."""

    adapts_top_layers = True

    def targets(self, backbone: Backbone, options: AdapterOptions) -> list[str] | str | None:
        if options.target_modules:
            return "all-linear" if options.target_modules == ["all-linear"] else list(options.target_modules)
        return pa.default_target_modules(backbone, self.peft_type)

    @staticmethod
    def task_type(backbone: Backbone) -> str | None:
        # FEATURE_EXTRACTION: peft's wrapper that returns hidden states, as the pooling needs.
        # Image models take pixel_values, which that wrapper does not pass on: no task type there.
        return "FEATURE_EXTRACTION" if isinstance(backbone, HFTextBackbone) else None


@STRATEGIES.register("lora")
class Lora(_LoraLike):
    """Low-rank updates W + (alpha/r) B A of the attention projections (Hu et al. 2021)."""

    name, peft_type = "lora", "LORA"
    # Adapters and head share one rate. On MiniLM (1,000 movie reviews, 2 epochs) 5e-4 left
    # the new head nearly untrained (accuracy 0.59), 1e-3 reached 0.72, 2e-3 0.77; 1e-3 stays
    # safe for larger bodies too.
    default_learning_rate = 1e-3

    def peft_config(self, backbone: Backbone, options: AdapterOptions) -> PeftConfig:
        from peft import LoraConfig

        return LoraConfig(
            task_type=self.task_type(backbone),
            r=options.lora_r,
            lora_alpha=options.lora_alpha,
            lora_dropout=options.lora_dropout,
            target_modules=self.targets(backbone, options),
        )


@STRATEGIES.register("loha")
class LoHa(_LoraLike):
    """Low-rank Hadamard-product updates (LyCORIS): more expressive than LoRA at equal rank."""

    name, peft_type = "loha", "LOHA"
    default_learning_rate = 1e-3

    def peft_config(self, backbone: Backbone, options: AdapterOptions) -> PeftConfig:
        from peft import LoHaConfig

        return LoHaConfig(
            task_type=self.task_type(backbone),
            r=options.lora_r,
            alpha=options.lora_alpha,
            module_dropout=options.lora_dropout,
            target_modules=self.targets(backbone, options),
        )


@STRATEGIES.register("ia3")
class IA3(_LoraLike):
    """Learned rescaling of keys, values and feed-forward activations (Liu et al. 2022)."""

    name, peft_type = "ia3", "IA3"
    # Far fewer parameters than LoRA, started at 1: the IA3 paper trains them at 3e-3.
    default_learning_rate = 3e-3

    def peft_config(self, backbone: Backbone, options: AdapterOptions) -> PeftConfig:
        from peft import IA3Config

        targets = self.targets(backbone, options)
        return IA3Config(
            task_type=self.task_type(backbone),
            target_modules=targets,
            feedforward_modules=pa.ia3_feedforward_modules(backbone, targets),
        )


class _PromptLearning(AdapterStrategy):
    """Trainable virtual tokens in front of the input; Hugging Face transformers only."""

    default_epochs = 10
    default_patience = 3

    def _add_adapter(self, model: nn.Module, config: FinetuneConfig) -> None:
        backbone = model.backbone
        if not isinstance(backbone, HFTextBackbone):
            raise ConfigError(
                f"{self.name} adds virtual tokens to a Hugging Face transformer; this "
                f"{backbone.registry_name} backbone has none. Use --strategy lora, finetune or "
                "feature-extraction."
            )
        _reserve_positions(model, config.num_virtual_tokens)
        original = backbone.model
        super()._add_adapter(model, config)
        try:
            _probe(model)
        except (RuntimeError, ValueError, TypeError, AttributeError, IndexError) as err:
            backbone.model = original
            raise ConfigError(
                f"{self.name} does not work with {backbone.hf_config.model_type} models in this peft / "
                f"transformers version ({type(err).__name__}: {err}). Use --strategy lora or ia3, which "
                "adapt the weights instead of the attention inputs."
            ) from err


@STRATEGIES.register("prompt-tuning")
class PromptTuning(_PromptLearning):
    """Soft prompt: virtual token embeddings prepended to the input (Lester et al. 2021)."""

    name, peft_type = "prompt-tuning", "PROMPT_TUNING"
    # A handful of embeddings trained from scratch need a large rate (the paper uses 0.3).
    default_learning_rate = 3e-2

    def peft_config(self, backbone: Backbone, options: AdapterOptions) -> PeftConfig:
        from peft import PromptTuningConfig

        # SAMPLE_VOCAB starts from real token embeddings: their scale suits every family.
        return PromptTuningConfig(
            task_type="FEATURE_EXTRACTION",
            num_virtual_tokens=options.num_virtual_tokens,
            prompt_tuning_init="SAMPLE_VOCAB",
        )


@STRATEGIES.register("prefix-tuning")
class PrefixTuning(_PromptLearning):
    """Trainable keys and values prepended in every attention layer (Li & Liang 2021)."""

    name, peft_type = "prefix-tuning", "PREFIX_TUNING"
    default_learning_rate = 1e-2

    def peft_config(self, backbone: Backbone, options: AdapterOptions) -> PeftConfig:
        from peft import PrefixTuningConfig

        return PrefixTuningConfig(
            task_type="FEATURE_EXTRACTION", num_virtual_tokens=options.num_virtual_tokens
        )


def _reserve_positions(model: nn.Module, virtual_tokens: int) -> None:
    """Virtual tokens take positions too: shorten the real text so both fit the model."""
    limit = model.backbone.max_positions
    if limit is None or model.max_length + virtual_tokens <= limit:
        return
    if virtual_tokens >= limit:
        raise ConfigError(
            f"--num_virtual_tokens {virtual_tokens} leaves no room in this model's {limit} positions."
        )
    logger.warning(
        "%d virtual tokens + max_length %d exceed the %d positions of the model; using max_length %d.",
        virtual_tokens, model.max_length, limit, limit - virtual_tokens,
    )  # fmt: skip
    model.max_length = limit - virtual_tokens


def _probe(model: nn.Module) -> None:
    """One tiny forward pass: peft + transformers failures surface here, not mid-training."""
    backbone = model.backbone
    batch = backbone.collate(model.preprocess(["probe text", "a"]))
    device = next(backbone.parameters()).device
    with torch.no_grad():
        out = backbone(**{k: v.to(device) for k, v in batch.items()})
    if out.last_hidden_state.shape[:2] != batch["input_ids"].shape[:2]:
        raise ValueError(f"hidden states of shape {tuple(out.last_hidden_state.shape)} for the input")


def _freeze_above_pooled(model: nn.Module) -> None:
    """Adapters in blocks above the highest pooled layer get no gradient; trainable, they
    would break DistributedDataParallel, so they stay frozen (as in finetune)."""
    backbone = model.backbone
    num_blocks = backbone.num_blocks()
    if backbone.num_hidden_states() != num_blocks + 1:  # shared blocks (ALBERT): no per-block map
        return
    top = max(i % (num_blocks + 1) for i in model.pooling.layers)
    groups = backbone.layer_groups()
    blocks = [g for g in groups if g.kind == "block"]
    for group in blocks[top:] + ([g for g in groups if g.kind == "final"] if top < num_blocks else []):
        group.set_trainable(False)
