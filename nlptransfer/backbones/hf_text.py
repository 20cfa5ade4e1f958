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
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, PretrainedConfig

from nlptransfer.backbones.base import BACKBONES, BackboneOutput
from nlptransfer.backbones.hf_base import (
    HFBackbone,
    HFSource,
    feature_stack,
    load_hf_config,
    load_hf_weights,
    rebuild_hf_model,
)
from nlptransfer.errors import ModelLoadError

logger = logging.getLogger(__name__)

# Keys a tokenizer may return that a model's forward may take.
_TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")


@BACKBONES.register("hf-text")
class HFTextBackbone(HFBackbone):
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
        # Batch widths rounded up to this multiple (None: the longest text). Set on GPUs: see
        # align_padding in nlptransfer.engine.fit.
        self.pad_to_multiple_of: int | None = None
        accepted = inspect.signature(model.forward).parameters
        self._input_keys = tuple(k for k in _TOKEN_KEYS if k in accepted)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, trust_remote_code: bool = False, from_scratch: bool = False
    ) -> HFTextBackbone:
        """Load from a hub id, a local folder, or a short name such as ``minilm``."""
        return cls.from_source(load_hf_config(name_or_path, trust_remote_code), from_scratch)

    @classmethod
    def from_source(cls, source: HFSource, from_scratch: bool = False) -> HFTextBackbone:
        """The model a loaded config describes; ``from_scratch`` keeps its architecture only."""
        model, tokenizer, config = load_hf_model(source, from_scratch=from_scratch)
        backbone = cls(feature_stack(model, config), tokenizer, config, source=source.name)
        backbone.trust_remote_code = bool(source.kwargs.get("trust_remote_code", False))
        return backbone

    @property
    def max_positions(self) -> int | None:
        return max_positions(self.hf_config, self.tokenizer)

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

    def tokenize_windows(self, texts: list[str], max_length: int, stride: int) -> list[list[dict[str, Any]]]:
        encoded = self.tokenizer(
            texts, truncation=True, max_length=max_length, stride=stride, return_overflowing_tokens=True
        )
        windows: list[list[dict[str, Any]]] = [[] for _ in texts]
        keys = [key for key in self._input_keys if key in encoded]
        for row, owner in enumerate(encoded["overflow_to_sample_mapping"]):
            windows[owner].append({key: encoded[key][row] for key in keys})
        for row, text_windows in enumerate(windows):
            if not text_windows or not text_windows[0]["input_ids"]:  # an empty text: one short window
                windows[row] = [{k: v[0] for k, v in self.tokenize([texts[row]], None, max_length).items()}]
        return windows

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        # Always right padding: position ids then match unpadded inputs in decoders too,
        # and the `last` pooling finds the last real token from the attention mask.
        pad_values = {"input_ids": self.tokenizer.pad_token_id, "attention_mask": 0}
        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            multiple = self.pad_to_multiple_of
            width = max(width, min(-(-width // multiple) * multiple, self.max_positions or width))
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
        remote = bool(config.get("trust_remote_code", False))
        hf_config, model = rebuild_hf_model(directory, remote)
        try:
            tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=remote)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"Could not rebuild the saved model in {directory}: {err}") from err
        return cls(feature_stack(model, hf_config), tokenizer, hf_config, source=config.get("source", ""))


def _is_prompt_learning(model: nn.Module) -> bool:
    """True when peft wraps ``model`` with prompt or prefix tuning."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def load_hf_model(
    source: str | HFSource,
    trust_remote_code: bool = False,
    model_class: Any = AutoModel,
    from_scratch: bool = False,
) -> tuple[nn.Module, Any, PretrainedConfig]:
    """(model, tokenizer, config) from a hub id, a local folder or a short name, with clear errors.

    ``source`` may be a config already loaded by :func:`load_hf_config`. ``model_class`` picks
    the head: ``AutoModel`` (none), ``AutoModelForMaskedLM``, ... ``from_scratch`` builds the
    same architecture with random weights.
    """
    if isinstance(source, str):
        source = load_hf_config(source, trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **source.kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"'{source.name}' has a config but its tokenizer could not be loaded: {err}"
        ) from err
    return load_hf_weights(source, model_class, from_scratch), tokenizer, source.config


def max_positions(hf_config: PretrainedConfig, tokenizer: Any) -> int | None:
    """The most tokens a model takes, from its position table and its tokenizer (None: no limit known)."""
    limits = [getattr(hf_config, "max_position_embeddings", None), tokenizer.model_max_length]
    # model_max_length is a huge sentinel when unset; RoBERTa's 514 positions hold only 512 tokens.
    known = [int(v) for v in limits if v is not None and v < 1_000_000]
    return min(known) if known else None
