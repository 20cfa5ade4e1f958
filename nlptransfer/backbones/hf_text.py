"""Hugging Face text models as a :class:`Backbone`.

- encoders (BERT, RoBERTa, DistilBERT, MiniLM, ERNIE, ...): the model itself;
- decoders (GPT-2, Llama-family such as SmolLM2, ...): the base model, right
  padding, a pad token when the tokenizer has none; pair with ``last`` or
  ``mean`` pooling;
- encoder-decoders (T5, BART, ...): the encoder stack is the feature source.
"""

from __future__ import annotations

import inspect
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig

from nlptransfer.backbones.base import BACKBONES, Backbone, BackboneOutput, LayerGroup
from nlptransfer.backbones.sources import resolve_model, unknown_model_error
from nlptransfer.errors import ConfigError, ModelLoadError

logger = logging.getLogger(__name__)

# Keys a tokenizer may return that a model's forward may take.
_TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")
# Module-name prefixes a peft wrapper adds in front of the wrapped model's own names.
_PEFT_PREFIX = re.compile(r"^base_model\.(model\.)?")


@BACKBONES.register("hf-text")
class HFTextBackbone(Backbone):
    """Any Hugging Face text model: encoder, decoder, or the encoder of an encoder-decoder."""

    registry_name = "hf-text"

    def __init__(self, model: nn.Module, tokenizer: Any, config: PretrainedConfig, source: str = "") -> None:
        super().__init__()
        # A pooler head that the chosen pooling never calls would hold parameters
        # with no gradient, which breaks DistributedDataParallel; we pool ourselves.
        if getattr(model, "pooler", None) is not None:
            model.pooler = None
        if tokenizer.pad_token is None:
            if (tokenizer.eos_token or tokenizer.unk_token) is None:
                raise ModelLoadError(f"The tokenizer of '{source}' has no pad, EOS or UNK token to pad with.")
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self.model = model
        self.tokenizer = tokenizer
        self.hf_config = config
        self.source = source
        self.hidden_size = int(config.hidden_size)
        accepted = inspect.signature(model.forward).parameters
        self._input_keys = tuple(k for k in _TOKEN_KEYS if k in accepted)

    @classmethod
    def from_pretrained(cls, name_or_path: str, trust_remote_code: bool = False) -> HFTextBackbone:
        """Load from a hub id, a local folder, or a short name such as ``minilm``."""
        model, tokenizer, config = load_hf_model(name_or_path, trust_remote_code)
        backbone = cls(_feature_stack(model, config), tokenizer, config, source=name_or_path)
        backbone.trust_remote_code = trust_remote_code
        return backbone

    @property
    def max_positions(self) -> int | None:
        return max_positions(self.hf_config, self.tokenizer)

    def num_hidden_states(self) -> int:
        # Not num_blocks() + 1: ALBERT shares one block across all its layers.
        return int(getattr(self.hf_config, "num_hidden_layers", self.num_blocks())) + 1

    def tokenize(
        self, texts: list[str], text_pairs: list[str] | None, max_length: int
    ) -> dict[str, list[list[int]]]:
        encoded = self.tokenizer(texts, text_pairs, truncation=True, max_length=max_length)
        result = {key: encoded[key] for key in self._input_keys if key in encoded}
        # Decoder tokenizers turn "" into no tokens at all; give such texts one real token.
        filler = (
            self.tokenizer.eos_token_id
            if self.tokenizer.eos_token_id is not None
            else self.tokenizer.pad_token_id
        )
        for row, ids in enumerate(result["input_ids"]):
            if not ids:
                for key in result:
                    result[key][row] = (
                        [filler] if key == "input_ids" else [1 if key == "attention_mask" else 0]
                    )
        return result

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        # Always right padding: position ids then match unpadded inputs in decoders too,
        # and the `last` pooling finds the last real token from the attention mask.
        pad_values = {"input_ids": self.tokenizer.pad_token_id, "attention_mask": 0}
        width = max(len(f["input_ids"]) for f in features)
        batch: dict[str, torch.Tensor] = {}
        for key in self._input_keys:
            if key not in features[0]:
                continue
            fill = pad_values.get(key, 0)
            rows = [list(f[key]) + [fill] * (width - len(f[key])) for f in features]
            batch[key] = torch.tensor(rows, dtype=torch.long)
        return batch

    def forward(self, output_hidden_states: bool = False, **inputs: torch.Tensor) -> BackboneOutput:
        model_inputs = {k: v for k, v in inputs.items() if k in self._input_keys}
        prompted = _is_prompt_learning(self.model)
        if prompted:  # peft drops token type ids under prompt learning, warning on every call
            model_inputs.pop("token_type_ids", None)
        out = self.model(**model_inputs, output_hidden_states=output_hidden_states)
        mask = model_inputs["attention_mask"]
        # Prompt tuning prepends virtual tokens; pooling must see exactly the real ones.
        extra = out.last_hidden_state.shape[1] - mask.shape[1] if prompted else 0
        states = out.hidden_states if output_hidden_states else None
        return BackboneOutput(
            last_hidden_state=out.last_hidden_state[:, extra:],
            attention_mask=mask,
            hidden_states=tuple(h[:, extra:] for h in states) if states is not None else None,
        )

    def layer_groups(self) -> list[LayerGroup]:
        blocks_name, blocks = _find_blocks(self.model)
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
        for block in _find_blocks(self.model)[1][-k:]:
            for module in block.modules():
                # transformers skips modules it marked initialised when it loaded the checkpoint.
                module._is_hf_initialized = False
                for param in module.parameters(recurse=False):
                    param._is_hf_initialized = False
            for module in block.modules():
                init(module)

    def get_config(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "model_type": self.hf_config.model_type,
            "trust_remote_code": getattr(self, "trust_remote_code", False),
        }

    def save(self, directory: Path) -> None:
        config = self.hf_config
        # A GGUF-loaded config describes its quantisation; the saved weights are plain float32.
        if hasattr(config, "quantization_config"):
            config = config.__class__.from_dict(config.to_dict())
            del config.quantization_config
        config.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    @classmethod
    def from_saved(cls, directory: Path, config: dict[str, Any]) -> HFTextBackbone:
        # Remote code runs again only if the user allowed it when training this model.
        remote = bool(config.get("trust_remote_code", False))
        try:
            hf_config = AutoConfig.from_pretrained(directory, trust_remote_code=remote)
            model = AutoModel.from_config(hf_config, dtype=torch.float32, trust_remote_code=remote)
            tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=remote)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"Could not rebuild the saved model in {directory}: {err}") from err
        return cls(_feature_stack(model, hf_config), tokenizer, hf_config, source=config.get("source", ""))


def _is_prompt_learning(model: nn.Module) -> bool:
    """True when peft wraps ``model`` with prompt or prefix tuning."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def _feature_stack(model: nn.Module, config: PretrainedConfig) -> nn.Module:
    """The part of a model that produces features: the encoder of an encoder-decoder."""
    if getattr(config, "is_encoder_decoder", False):
        if not hasattr(model, "get_encoder"):
            raise ConfigError(f"{type(model).__name__} is an encoder-decoder without get_encoder().")
        return model.get_encoder()
    return model


def _find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
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


def load_hf_model(
    name_or_path: str, trust_remote_code: bool = False, model_class: Any = AutoModel
) -> tuple[nn.Module, Any, PretrainedConfig]:
    """(model, tokenizer, config) from a hub id, a local folder or a short name, with clear errors.

    ``model_class`` picks the head: ``AutoModel`` (none), ``AutoModelForMaskedLM``, ...
    """
    resolved = resolve_model(name_or_path)
    path, extra = resolved.path, {"trust_remote_code": trust_remote_code, **resolved.load_kwargs()}
    local = Path(path).is_dir()
    if local and not resolved.gguf_file and not (Path(path) / "config.json").is_file():
        raise ModelLoadError(
            f"Model folder '{name_or_path}' has no config.json. Pass the folder that holds the "
            "Hugging Face model files (config.json, weights, tokenizer)."
        )
    try:
        config = AutoConfig.from_pretrained(path, **extra)
    except (OSError, ValueError) as err:
        if local:
            raise ModelLoadError(f"Could not read the config in {path}: {err}") from err
        raise unknown_model_error(name_or_path, err) from err
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **extra)
        model = model_class.from_pretrained(path, config=config, dtype=torch.float32, **extra)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"'{name_or_path}' has a config but its tokenizer or weights could not be loaded: {err}"
        ) from err
    return model, tokenizer, config


def max_positions(hf_config: PretrainedConfig, tokenizer: Any) -> int | None:
    """The most tokens a model takes, from its position table and its tokenizer (None: no limit known)."""
    limits = [getattr(hf_config, "max_position_embeddings", None), tokenizer.model_max_length]
    # model_max_length is a huge sentinel when unset; RoBERTa's 514 positions hold only 512 tokens.
    known = [int(v) for v in limits if v is not None and v < 1_000_000]
    return min(known) if known else None
