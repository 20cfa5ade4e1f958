"""What every Hugging Face model behind a :class:`Backbone` shares.

Text and image models differ in their preprocessing; their parameters group the
same way (embeddings, the list of layers or stages, final norms), re-initialise
the same way, and save their config the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig

from nlptransfer.backbones.base import Backbone, LayerGroup
from nlptransfer.backbones.sources import resolve_model, unknown_model_error
from nlptransfer.errors import ConfigError, ModelLoadError

# Module-name prefixes a peft wrapper adds in front of the wrapped model's own names.
_PEFT_PREFIX = re.compile(r"^base_model\.(model\.)?")


class HFBackbone(Backbone):
    """A Hugging Face model (``self.model``) whose layer list is found by size."""

    model: nn.Module
    hf_config: PretrainedConfig
    source: str

    def num_hidden_states(self) -> int:
        # Not num_blocks() + 1: ALBERT shares one block across all its layers.
        return int(getattr(self.hf_config, "num_hidden_layers", self.num_blocks())) + 1

    def layer_groups(self) -> list[LayerGroup]:
        blocks_name, blocks = find_blocks(self.model)
        in_blocks: set[int] = set()
        label = _PEFT_PREFIX.sub("", blocks_name) if hasattr(self.model, "peft_config") else blocks_name
        groups = [LayerGroup(f"{label}.{i}", "block") for i in range(len(blocks))]
        for i, block in enumerate(blocks):
            for name, param in block.named_parameters():
                groups[i].parameters.append((f"model.{blocks_name}.{i}.{name}", param))
                in_blocks.add(id(param))
        # HF models register embeddings before the blocks and final norms after them.
        embeddings, final = LayerGroup("embeddings", "embeddings"), LayerGroup("final", "final")
        seen_blocks = False
        for name, param in self.model.named_parameters():
            if id(param) in in_blocks:
                seen_blocks = True
                continue
            input_side = not seen_blocks or name.startswith("prompt_encoder.")  # peft's virtual tokens
            (embeddings if input_side else final).parameters.append((f"model.{name}", param))
        return [g for g in [embeddings, *groups, final] if g.parameters]

    def reinit_top_blocks(self, k: int) -> None:
        self._check_reinit(k)
        init = getattr(self.model, "_init_weights", None)
        if init is None:
            super().reinit_top_blocks(k)
        for block in find_blocks(self.model)[1][-k:]:
            for module in block.modules():
                # transformers skips modules it marked initialised when it loaded the checkpoint.
                module._is_hf_initialized = False
                for param in module.parameters(recurse=False):
                    param._is_hf_initialized = False
            for module in block.modules():
                init(module)

    @property
    def replays_blocks(self) -> bool:
        # Images are augmented afresh every epoch: what enters a block is not the same twice.
        return self.modality == "text"

    def frozen_bottom_modules(self) -> Iterator[nn.Module]:
        cut = self.frozen_bottom()
        if cut == 0:
            return
        name, blocks = find_blocks(self.model)
        # Registered before the blocks and not holding them: embeddings, and a dropout on their output.
        for module_name, module in self.model.named_modules():
            if module_name == name:
                break
            if module_name and not name.startswith(f"{module_name}."):
                yield module
        yield from blocks[:cut]

    def block_input(self, block: int, **inputs: torch.Tensor) -> torch.Tensor:
        blocks = find_blocks(self.model)[1]
        captured: list[torch.Tensor] = []

        def grab(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            captured.append(args[0] if args else kwargs["hidden_states"])
            raise _ReachedBlock

        handle = blocks[block].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            self(**inputs)
        except _ReachedBlock:
            pass
        finally:
            handle.remove()
        if not captured:
            raise ConfigError(f"The forward pass of {type(self.model).__name__} never reached block {block}.")
        return captured[0]

    @contextmanager
    def replaying(self, block: int, states: torch.Tensor) -> Iterator[None]:
        blocks = find_blocks(self.model)[1]

        def feed(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[tuple[Any, ...], dict[str, Any]]:
            if args:
                return (states, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": states}

        handle = blocks[block].register_forward_pre_hook(feed, with_kwargs=True)
        # An instance attribute shadows the class's forward; one already there (accelerate's
        # device-map hooks set one) is put back afterwards.
        previous = [skipped.__dict__.get("forward") for skipped in blocks[:block]]
        for skipped in blocks[:block]:
            skipped.forward = _pass_through
        try:
            yield
        finally:
            handle.remove()
            for skipped, forward in zip(blocks[:block], previous, strict=True):
                if forward is None:
                    del skipped.forward
                else:
                    skipped.forward = forward

    def get_config(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "model_type": self.hf_config.model_type,
            "trust_remote_code": getattr(self, "trust_remote_code", False),
        }


class _ReachedBlock(Exception):
    """Ends a forward pass once the input of the block asked for is captured."""


def _pass_through(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    # A block skipped under ``replaying``: the states fed to the first replayed block replace its output.
    return hidden_states


def feature_stack(model: nn.Module, config: PretrainedConfig) -> nn.Module:
    """The part of a model that produces features: the encoder of an encoder-decoder."""
    if getattr(config, "is_encoder_decoder", False):
        if not hasattr(model, "get_encoder"):
            raise ConfigError(f"{type(model).__name__} is an encoder-decoder without get_encoder().")
        return model.get_encoder()
    return model


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of transformer layers: the list holding the most parameters."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            size = sum(p.numel() for p in module.parameters())
            if best is None or size > best[0]:
                best = (size, name, module)
    if best is None:
        raise ConfigError(f"{type(model).__name__} has no list of layers to group for freezing.")
    return best[1], best[2]


@dataclass
class HFSource:
    """A model's config, and where and how ``from_pretrained`` finds the rest of it."""

    name: str
    path: str
    kwargs: dict[str, Any]
    config: PretrainedConfig


def load_hf_config(name_or_path: str, trust_remote_code: bool = False) -> HFSource:
    """The config of a hub id, a local folder or a short name, with clear errors."""
    resolved = resolve_model(name_or_path)
    path, extra = resolved.path, {"trust_remote_code": trust_remote_code, **resolved.load_kwargs()}
    local = Path(path).is_dir()
    if local and not resolved.gguf_file and not (Path(path) / "config.json").is_file():
        raise ModelLoadError(
            f"Model folder '{name_or_path}' has no config.json. Pass the folder that holds the "
            "Hugging Face model files (config.json, weights, tokenizer or image processor)."
        )
    try:
        config = AutoConfig.from_pretrained(path, **extra)
    except (OSError, ValueError) as err:
        if local:
            raise ModelLoadError(f"Could not read the config in {path}: {err}") from err
        raise unknown_model_error(name_or_path, err) from err
    return HFSource(name_or_path, path, extra, config)


def load_hf_weights(source: HFSource, model_class: Any, from_scratch: bool = False) -> nn.Module:
    """The model of ``source`` with its pretrained weights, or random ones when ``from_scratch``."""
    try:
        if from_scratch:
            remote = source.kwargs["trust_remote_code"]
            return model_class.from_config(source.config, dtype=torch.float32, trust_remote_code=remote)
        config, kwargs = source.config, source.kwargs
        return model_class.from_pretrained(source.path, config=config, dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"'{source.name}' has a config but its weights could not be loaded: {err}. Pass "
            "--from_scratch to train this architecture from random weights instead."
        ) from err


def rebuild_hf_model(directory: Path, remote: bool) -> tuple[PretrainedConfig, nn.Module]:
    """(config, randomly initialised model) from a saved backbone folder, for weights to load into.

    Remote code runs again only if the user allowed it when training this model.
    """
    try:
        hf_config = AutoConfig.from_pretrained(directory, trust_remote_code=remote)
        model = AutoModel.from_config(hf_config, dtype=torch.float32, trust_remote_code=remote)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"Could not rebuild the saved model in {directory}: {err}") from err
    return hf_config, model


def is_vision_config(config: Any) -> bool:
    """True for image models: their config has image channels and no vocabulary."""
    return hasattr(config, "num_channels") and not hasattr(config, "vocab_size")
