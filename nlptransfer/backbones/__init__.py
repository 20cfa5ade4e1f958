"""Source models behind one :class:`Backbone` contract."""

from nlptransfer.backbones.base import BACKBONES, Backbone, BackboneOutput, LayerGroup
from nlptransfer.backbones.elmo import ElmoBackbone
from nlptransfer.backbones.hf_text import HFTextBackbone
from nlptransfer.backbones.sources import SHORT_NAMES, resolve_model
from nlptransfer.backbones.word_vectors import VocabOptions, WordVectorBackbone, is_word_vector_source


def load_backbone(
    name_or_path: str,
    trust_remote_code: bool = False,
    train_texts: list[str] | None = None,
    word_options: VocabOptions | None = None,
    allow_pickle: bool = False,
) -> Backbone:
    """Load a pretrained backbone: HF short name / folder / hub id, or word vectors.

    Word-vector backbones align their vocabulary to ``train_texts``.
    """
    if name_or_path.startswith("elmo:"):
        return ElmoBackbone.from_files(name_or_path.removeprefix("elmo:"))
    if is_word_vector_source(name_or_path):
        options = word_options or VocabOptions()
        return WordVectorBackbone.from_source(
            name_or_path, train_texts, options, allow_pickle=allow_pickle, seed=options.seed
        )
    return HFTextBackbone.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)


__all__ = [
    "BACKBONES",
    "SHORT_NAMES",
    "Backbone",
    "BackboneOutput",
    "ElmoBackbone",
    "HFTextBackbone",
    "LayerGroup",
    "VocabOptions",
    "WordVectorBackbone",
    "is_word_vector_source",
    "load_backbone",
    "resolve_model",
]
