"""Source models behind one :class:`Backbone` contract.

Hugging Face image models load transformers' image processors (3 s): their module is imported
when an image model is first loaded, never for a text run.
"""

from typing import Any

from nlptransfer.backbones.base import BACKBONES, Backbone, BackboneOutput, LayerGroup
from nlptransfer.backbones.elmo import ElmoBackbone
from nlptransfer.backbones.hf_base import HFBackbone, is_vision_config, load_hf_config
from nlptransfer.backbones.hf_text import HFTextBackbone
from nlptransfer.backbones.sources import SHORT_NAMES, resolve_model
from nlptransfer.backbones.torch_vision import TorchVisionBackbone, is_torch_vision_source
from nlptransfer.backbones.vision import ImageBackbone, ImageOptions
from nlptransfer.backbones.word_vectors import VocabOptions, WordVectorBackbone, is_word_vector_source
from nlptransfer.errors import ModelLoadError


def load_source(
    name_or_path: str,
    trust_remote_code: bool = False,
    vocabulary_texts: list[str] | None = None,
    word_options: VocabOptions | None = None,
    allow_pickle: bool = False,
    from_scratch: bool = False,
    image_options: ImageOptions | None = None,
) -> Backbone:
    """Load a source model's backbone: HF short name / folder / hub id, word vectors, ELMo, torchvision.

    Word-vector backbones align their vocabulary to ``vocabulary_texts``. (A folder a run wrote is
    loaded by ``nlptransfer.load_backbone``, which sits above the model that folder holds.)
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
            name_or_path, vocabulary_texts, options, allow_pickle=allow_pickle, seed=options.seed
        )
    if is_torch_vision_source(name_or_path):
        return TorchVisionBackbone.from_pretrained(name_or_path, from_scratch, image_options)
    source = load_hf_config(name_or_path, trust_remote_code)
    if is_vision_config(source.config):
        from nlptransfer.backbones.hf_vision import HFVisionBackbone

        return HFVisionBackbone.from_source(source, from_scratch, image_options)
    return HFTextBackbone.from_source(source, from_scratch)


BACKBONES.register_lazy("hf-image", "nlptransfer.backbones.hf_vision")


def __getattr__(name: str) -> Any:
    if name == "HFVisionBackbone":
        from nlptransfer.backbones.hf_vision import HFVisionBackbone

        return HFVisionBackbone
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "load_source",
    "resolve_model",
]
