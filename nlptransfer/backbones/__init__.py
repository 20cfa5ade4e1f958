"""Source models behind one :class:`Backbone` contract."""

import logging
from pathlib import Path

from nlptransfer.backbones.base import BACKBONES, Backbone, BackboneOutput, LayerGroup
from nlptransfer.backbones.elmo import ElmoBackbone
from nlptransfer.backbones.hf_base import HFBackbone, load_hf_config
from nlptransfer.backbones.hf_text import HFTextBackbone
from nlptransfer.backbones.hf_vision import HFVisionBackbone, is_vision_config
from nlptransfer.backbones.sources import SHORT_NAMES, resolve_model
from nlptransfer.backbones.torch_vision import TorchVisionBackbone, is_torch_vision_source
from nlptransfer.backbones.vision import ImageBackbone, ImageOptions
from nlptransfer.backbones.word_vectors import VocabOptions, WordVectorBackbone, is_word_vector_source
from nlptransfer.errors import ModelLoadError

logger = logging.getLogger(__name__)
# The config file of a saved TransferModel (nlptransfer.model.CONFIG_NAME).
TRANSFER_CONFIG = "transfer_config.json"


def load_backbone(
    name_or_path: str,
    trust_remote_code: bool = False,
    train_texts: list[str] | None = None,
    word_options: VocabOptions | None = None,
    allow_pickle: bool = False,
    from_scratch: bool = False,
    image_options: ImageOptions | None = None,
) -> Backbone:
    """Load a pretrained backbone: HF short name / folder / hub id, word vectors, or a saved run.

    Word-vector backbones align their vocabulary to ``train_texts``. A folder written by
    ``TransferModel.save_pretrained`` (any run's output) gives its trained body.
    ``from_scratch`` keeps a Hugging Face model's architecture with random weights.
    """
    if from_scratch and (name_or_path.startswith("elmo:") or is_word_vector_source(name_or_path)):
        raise ModelLoadError(
            "--from_scratch rebuilds a Hugging Face model's architecture with random weights; "
            f"'{name_or_path}' is not one. Drop the flag."
        )
    if name_or_path.startswith("elmo:"):
        return ElmoBackbone.from_files(name_or_path.removeprefix("elmo:"))
    if is_word_vector_source(name_or_path):
        options = word_options or VocabOptions()
        return WordVectorBackbone.from_source(
            name_or_path, train_texts, options, allow_pickle=allow_pickle, seed=options.seed
        )
    if is_torch_vision_source(name_or_path):
        return TorchVisionBackbone.from_pretrained(name_or_path, from_scratch, image_options)
    if (Path(name_or_path).expanduser() / TRANSFER_CONFIG).is_file():
        return _trained_body(name_or_path, from_scratch, image_options, trust_remote_code)
    source = load_hf_config(name_or_path, trust_remote_code)
    if is_vision_config(source.config):
        return HFVisionBackbone.from_source(source, from_scratch, image_options)
    return HFTextBackbone.from_source(source, from_scratch)


def _trained_body(
    folder: str, from_scratch: bool, image_options: ImageOptions | None, trust_remote_code: bool
) -> Backbone:
    from nlptransfer.model import TransferModel  # the model module imports this one

    if from_scratch:
        raise ModelLoadError(
            f"'{folder}' is a trained nlptransfer model; --from_scratch would discard its weights. "
            "Pass the original source model with --from_scratch instead."
        )
    backbone = TransferModel.from_pretrained(folder, trust_remote_code).backbone
    if isinstance(backbone, ImageBackbone) and image_options is not None:
        backbone.set_options(image_options)
    logger.info("Starting from the trained body in %s (its head is dropped).", folder)
    return backbone


__all__ = [
    "BACKBONES",
    "SHORT_NAMES",
    "Backbone",
    "BackboneOutput",
    "ElmoBackbone",
    "HFBackbone",
    "HFTextBackbone",
    "HFVisionBackbone",
    "ImageBackbone",
    "ImageOptions",
    "LayerGroup",
    "TorchVisionBackbone",
    "VocabOptions",
    "WordVectorBackbone",
    "is_word_vector_source",
    "load_backbone",
    "resolve_model",
]
