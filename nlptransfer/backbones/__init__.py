"""Source models behind one :class:`Backbone` contract."""

from nlptransfer.backbones.base import BACKBONES, Backbone, BackboneOutput, LayerGroup
from nlptransfer.backbones.hf_text import HFTextBackbone
from nlptransfer.backbones.sources import SHORT_NAMES, resolve_model


def load_backbone(name_or_path: str, trust_remote_code: bool = False) -> Backbone:
    """Load a pretrained backbone from a short name, local folder or hub id."""
    return HFTextBackbone.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)


__all__ = [
    "BACKBONES",
    "SHORT_NAMES",
    "Backbone",
    "BackboneOutput",
    "HFTextBackbone",
    "LayerGroup",
    "load_backbone",
    "resolve_model",
]
