"""Hugging Face text models (BERT-style encoders first) as a :class:`Backbone`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel

from nlptransfer.backbones.base import BACKBONES, Backbone, BackboneOutput, LayerGroup
from nlptransfer.backbones.sources import resolve_model, unknown_model_error
from nlptransfer.errors import ConfigError, ModelLoadError

logger = logging.getLogger(__name__)

# Keys a tokenizer may return that the model's forward takes.
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@BACKBONES.register("hf-text")
class HFTextBackbone(Backbone):
    """Any ``AutoModel`` text encoder: BERT, RoBERTa, DistilBERT, MiniLM, ERNIE, ..."""

    registry_name = "hf-text"

    def __init__(self, model: PreTrainedModel, tokenizer: Any, source: str = "") -> None:
        super().__init__()
        # A pooler head that the chosen pooling never calls would hold parameters
        # with no gradient, which breaks DistributedDataParallel; we pool ourselves.
        if getattr(model, "pooler", None) is not None:
            model.pooler = None
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.hidden_size = int(model.config.hidden_size)

    @classmethod
    def from_pretrained(cls, name_or_path: str, trust_remote_code: bool = False) -> HFTextBackbone:
        """Load from a hub id, a local folder, or a short name such as ``minilm``."""
        path = resolve_model(name_or_path)
        local = Path(path).is_dir()
        if local and not (Path(path) / "config.json").is_file():
            raise ModelLoadError(
                f"Model folder '{name_or_path}' has no config.json. Pass the folder that holds the "
                "Hugging Face model files (config.json, weights, tokenizer)."
            )
        try:
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as err:
            if local:
                raise ModelLoadError(f"Could not read {path}/config.json: {err}") from err
            raise unknown_model_error(name_or_path, err) from err
        if getattr(config, "is_encoder_decoder", False):
            raise ConfigError(
                f"'{name_or_path}' is an encoder-decoder model ({config.model_type}); this "
                "release supports encoder models such as BERT and MiniLM as text backbones."
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            model = AutoModel.from_pretrained(
                path, config=config, dtype=torch.float32, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as err:
            raise ModelLoadError(
                f"'{name_or_path}' has a config but its tokenizer or weights could not be loaded: {err}"
            ) from err
        return cls(model, tokenizer, source=name_or_path)

    @property
    def max_positions(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    def tokenize(
        self, texts: list[str], text_pairs: list[str] | None, max_length: int
    ) -> dict[str, list[list[int]]]:
        encoded = self.tokenizer(texts, text_pairs, truncation=True, max_length=max_length)
        return {key: encoded[key] for key in _MODEL_INPUTS if key in encoded}

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pad_values = {"input_ids": self.tokenizer.pad_token_id, "attention_mask": 0}
        left = self.tokenizer.padding_side == "left"
        width = max(len(f["input_ids"]) for f in features)
        batch: dict[str, torch.Tensor] = {}
        for key in _MODEL_INPUTS:
            if key not in features[0]:
                continue
            fill = pad_values.get(key, 0)
            rows = []
            for feature in features:
                pad = [fill] * (width - len(feature[key]))
                rows.append(pad + list(feature[key]) if left else list(feature[key]) + pad)
            batch[key] = torch.tensor(rows, dtype=torch.long)
        return batch

    def forward(self, output_hidden_states: bool = False, **inputs: torch.Tensor) -> BackboneOutput:
        model_inputs = {k: v for k, v in inputs.items() if k in _MODEL_INPUTS}
        out = self.model(**model_inputs, output_hidden_states=output_hidden_states)
        return BackboneOutput(
            last_hidden_state=out.last_hidden_state,
            attention_mask=model_inputs["attention_mask"],
            hidden_states=out.hidden_states if output_hidden_states else None,
        )

    def layer_groups(self) -> list[LayerGroup]:
        blocks_name, blocks = _find_blocks(self.model)
        block_params: dict[int, str] = {}
        groups = [LayerGroup(f"{blocks_name}.{i}", "block") for i in range(len(blocks))]
        for i, block in enumerate(blocks):
            for name, param in block.named_parameters():
                groups[i].parameters.append((f"model.{blocks_name}.{i}.{name}", param))
                block_params[id(param)] = name
        # HF models register embeddings before the blocks and final norms after them.
        embeddings, final = LayerGroup("embeddings", "embeddings"), LayerGroup("final", "final")
        seen_blocks = False
        for name, param in self.model.named_parameters():
            if id(param) in block_params:
                seen_blocks = True
                continue
            (final if seen_blocks else embeddings).parameters.append((f"model.{name}", param))
        return [g for g in [embeddings, *groups, final] if g.parameters]

    def get_config(self) -> dict[str, Any]:
        return {"source": self.source, "model_type": self.model.config.model_type}

    def save(self, directory: Path) -> None:
        self.model.config.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    @classmethod
    def from_saved(cls, directory: Path, config: dict[str, Any]) -> HFTextBackbone:
        hf_config = AutoConfig.from_pretrained(directory)
        model = AutoModel.from_config(hf_config, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        return cls(model, tokenizer, source=config.get("source", ""))


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
