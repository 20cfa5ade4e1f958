"""PEFT adapters on a backbone, through the peft library.

Hugging Face backbones wrap their model with ``peft.get_peft_model`` (a
``PeftModelForFeatureExtraction``, which also runs prompt learning). Other
backbones (word vectors, ELMo) get LoRA / IA3 layers injected in place with
``peft.inject_adapter_in_model``, since peft's wrapper cannot hold the module
that contains it. Either way the adapter's config is recorded in the saved
model's config, so :meth:`TransferModel.from_pretrained` rebuilds the same
modules before it loads the weights strictly.

peft is imported inside the functions: it takes seconds to import and most
runs never use it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nlptransfer.backbones.base import Backbone
from nlptransfer.backbones.hf_base import HFBackbone
from nlptransfer.backbones.hf_text import HFTextBackbone
from nlptransfer.backbones.word_vectors import WordVectorBackbone
from nlptransfer.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    from peft import PeftConfig

ADAPTER_NAME = "default"  # peft's name for a model's only adapter
ADAPTER_DIR = "adapter"  # inside the saved backbone folder, in peft's own format
ADAPTER_CONFIG_KEY = "adapter"  # in the saved backbone config
# Layer types peft's LoRA can adapt; shown when --target_modules matches nothing.
_ADAPTABLE = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d)


def _holder(backbone: Backbone) -> nn.Module:
    """The module peft attaches to: the HF model it wraps, or the backbone it injects into."""
    return backbone.model if isinstance(backbone, HFBackbone) else backbone


def adapter_config(backbone: Backbone) -> PeftConfig | None:
    """The peft config of the backbone's adapter, or None when it has none."""
    configs = getattr(_holder(backbone), "peft_config", None) or {}
    return configs.get(ADAPTER_NAME)


def adapter_parameters(backbone: Backbone) -> list[tuple[str, nn.Parameter]]:
    """Parameters that peft added: every one sits under a key named after the adapter."""
    return [(n, p) for n, p in backbone.named_parameters() if ADAPTER_NAME in n.split(".")]


@contextmanager
def _quiet_peft() -> Iterator[None]:
    # peft reads a deprecated transformers property and announces that it fixed
    # fan_in_fan_out for GPT-2's Conv1D; neither is the user's concern.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
        yield


def apply_adapter(backbone: Backbone, config: PeftConfig) -> None:
    """Add the adapter described by ``config`` to ``backbone`` (in place)."""
    from peft import get_peft_model, inject_adapter_in_model

    if adapter_config(backbone) is not None:
        raise ConfigError("This backbone already has a PEFT adapter; merge it or start from a fresh model.")
    if config.is_prompt_learning and not isinstance(backbone, HFTextBackbone):
        raise ConfigError(
            f"{config.peft_type.value} adds virtual tokens to a Hugging Face transformer; this "
            f"{backbone.registry_name} backbone has none. Use --strategy lora (or ia3 where it has "
            "linear layers), finetune or feature-extraction."
        )
    try:
        with _quiet_peft():
            if isinstance(backbone, HFBackbone):
                backbone.model = get_peft_model(backbone.model, config, adapter_name=ADAPTER_NAME)
            else:
                inject_adapter_in_model(config, backbone, adapter_name=ADAPTER_NAME)
    except (ValueError, TypeError, KeyError) as err:
        raise ConfigError(
            f"peft could not add a {config.peft_type.value} adapter to this {_family(backbone)} model: "
            f"{str(err).rstrip('.')}. Its linear and embedding layers: "
            f"{', '.join(adaptable_layer_names(backbone)) or 'none'}. Pass --target_modules with some of "
            "them (or all-linear), or use another strategy."
        ) from err


def adaptable_layer_names(backbone: Backbone) -> list[str]:
    """Distinct short names of the layers LoRA could adapt, e.g. ``query``, ``dense``."""
    names = {name.rsplit(".", 1)[-1] for name, m in backbone.named_modules() if isinstance(m, _ADAPTABLE)}
    conv1d = {name.rsplit(".", 1)[-1] for name, m in backbone.named_modules() if type(m).__name__ == "Conv1D"}
    return sorted((names | conv1d) - {"base_layer", ADAPTER_NAME, ""})


def _family(backbone: Backbone) -> str:
    return backbone.hf_config.model_type if isinstance(backbone, HFBackbone) else backbone.registry_name


def adapter_state(backbone: Backbone) -> dict[str, Any] | None:
    """The adapter's peft config as JSON-safe data (None without an adapter)."""
    config = adapter_config(backbone)
    return None if config is None else _json_safe(config.to_dict())


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, set | tuple | list):
        items = [_json_safe(v) for v in value]
        return sorted(items) if isinstance(value, set) else items
    if hasattr(value, "value") and isinstance(value, str):  # peft's str enums (PeftType, TaskType)
        return value.value
    return value


def restore_adapter(backbone: Backbone, state: dict[str, Any]) -> None:
    """Re-create a saved adapter (random weights; the saved ones load afterwards)."""
    from peft import PeftConfig

    state = dict(state)
    # peft warns when a recorded base-model path differs from the rebuilt model's (which has none).
    base_model = state.pop("base_model_name_or_path", None)
    try:
        config = PeftConfig.from_peft_type(**state)
    except (KeyError, TypeError, ValueError) as err:
        raise ModelLoadError(
            f"The saved adapter config ({state.get('peft_type')}) cannot be read by peft: {err}. "
            "Install the peft version the model was trained with."
        ) from err
    apply_adapter(backbone, config)
    adapter_config(backbone).base_model_name_or_path = base_model


def save_adapter(backbone: Backbone, directory: Path, weights: dict[str, torch.Tensor] | None = None) -> None:
    """Write the adapter in peft's own format (adapter_config.json, adapter_model.safetensors).

    ``weights``: the backbone's full state dict, to read instead of its own tensors (FSDP shards).
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    config = adapter_config(backbone)
    if config is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    if weights is not None and isinstance(backbone, HFBackbone):  # the holder is the backbone's .model
        weights = {k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")}
    state = get_peft_model_state_dict(_holder(backbone), state_dict=weights, adapter_name=ADAPTER_NAME)
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(directory))


def merge_adapter(backbone: Backbone) -> None:
    """Fold the adapter's weight update into the base weights and remove the adapter layers."""
    config = adapter_config(backbone)
    if config is None:
        raise ConfigError("This model has no PEFT adapter to merge; it is already a plain model.")
    if config.is_prompt_learning:
        raise ConfigError(
            f"A {config.peft_type.value} adapter adds virtual tokens, not a weight update, so it cannot "
            "be merged into the base weights. Use the saved model as it is (TransferModel.from_pretrained "
            "or `nlptransfer predict` load it, with peft installed)."
        )
    with _quiet_peft():
        if isinstance(backbone, HFBackbone):
            backbone.model = backbone.model.merge_and_unload()
        else:
            _merge_injected(backbone)


def _merge_injected(backbone: Backbone) -> None:
    """merge_and_unload for adapters injected without a PeftModel: peft's per-layer merge."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(backbone.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge(adapter_names=[ADAPTER_NAME])
            parent_name, _, child = name.rpartition(".")
            setattr(backbone.get_submodule(parent_name), child, module.get_base_layer())
    del backbone.peft_config


def default_target_modules(backbone: Backbone, peft_type: str) -> list[str] | str | None:
    """What LoRA-like adapters adapt when --target_modules is not given.

    None lets peft pick its per-family default (BERT query/value, GPT-2 c_attn,
    Llama q_proj/v_proj, T5 q/v, ...); families it does not know get every linear layer.
    """
    if isinstance(backbone, WordVectorBackbone):
        if peft_type == "IA3":
            raise ConfigError(
                "ia3 rescales the outputs of linear layers; a word-vector backbone has only its "
                "embedding matrix. Use --strategy lora (a low-rank update of the embeddings) or finetune."
            )
        return ["embeddings"]  # the pretrained part; a BiLSTM / CNN encoder on top trains fully
    if isinstance(backbone, HFTextBackbone) and backbone.hf_config.model_type in _peft_mapping(peft_type):
        return None
    if backbone.modality == "image":
        return _image_targets(backbone)
    return "all-linear"


def _image_targets(backbone: Backbone) -> list[str] | str:
    """ViT-style attention: query and value, as for BERT; else linear layers; a pure CNN: its convolutions."""
    names = set(adaptable_layer_names(backbone))
    for pair in (["query", "value"], ["q_proj", "v_proj"]):
        if set(pair) <= names:
            return pair
    modules = list(backbone.named_modules())
    if any(isinstance(m, nn.Linear) for _, m in modules):
        return "all-linear"
    return sorted({name.rsplit(".", 1)[-1] for name, m in modules if isinstance(m, nn.Conv2d)})


def _peft_mapping(peft_type: str) -> dict[str, Any]:
    from peft.utils import constants

    return getattr(constants, f"TRANSFORMERS_MODELS_TO_{peft_type}_TARGET_MODULES_MAPPING", {})


def ia3_feedforward_modules(backbone: Backbone, targets: list[str] | str | None) -> list[str] | None:
    """IA3 scales the input of feed-forward layers and the output of the others.

    peft knows which are which for the families it maps; for user-chosen targets we
    keep its feed-forward names that are among them.
    """
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD

    family = _family(backbone)
    if targets is None:
        return None
    known = FEEDFORWARD.get(family, []) if isinstance(backbone, HFBackbone) else []
    known = [known] if isinstance(known, str) else known
    return [m for m in known if isinstance(targets, list) and m in targets]
