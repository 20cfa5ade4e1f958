"""Models sharded by FSDP2: which blocks become units, and whole tensors out of sharded ones.

Under accelerate's FSDP2 every parameter of the prepared model is a DTensor holding this process's
shard. What reads a whole parameter (the best epoch's snapshot, the saved model, the weights hash)
gathers it first; gathering is a collective, so every process calls these functions at the same
point. On a model that is not sharded they cost nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate import Accelerator

from nlptransfer.backbones.hf_base import find_blocks
from nlptransfer.errors import ConfigError


def is_sharded(model: torch.nn.Module) -> bool:
    return any(hasattr(p, "full_tensor") for p in model.parameters())


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The full tensor of a DTensor (a collective), or the tensor itself."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def load_whole(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load full tensors into ``model`` (not strict: ``state`` may cover part of it), sharded or not."""
    if not is_sharded(model):
        model.load_state_dict(state, strict=False)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))


def whole_state_dict(accelerator: Accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The full state dict of a sharded model, gathered on the main process (call it on all);
    None for a model that is not sharded (it saves itself)."""
    if not is_sharded(model):
        return None
    return accelerator.get_state_dict(model)


def wrap_blocks(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """Under FSDP, make each block of the body one unit (transformer-block wrapping), unless the
    accelerate config names the classes itself: accelerate reads the classes from a transformers
    model's ``_no_split_modules``, which a TransferModel (body + head) does not have."""
    plugin: Any = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is None or plugin.transformer_cls_names_to_wrap is not None:
        return
    body = getattr(getattr(model, "backbone", None), "model", None)
    if body is None:
        return
    try:
        _, blocks = find_blocks(body)
    except ConfigError:  # no transformer blocks to shard by (word vectors, ELMo)
        return
    plugin.transformer_cls_names_to_wrap = sorted({type(block).__name__ for block in blocks})


__all__ = ["is_sharded", "load_whole", "whole", "whole_state_dict", "wrap_blocks"]
