"""Training objectives, registered by name: each is a loader and a loss (see ``base.Objective``)."""

from nlptransfer.engine.objectives.base import OBJECTIVES, Objective
from nlptransfer.engine.objectives.classification import Classification, ClosedFormHead
from nlptransfer.engine.objectives.contrastive import ContrastivePairs
from nlptransfer.engine.objectives.language_model import CausalLM, LanguageModeling, MaskedLM, SpanCorruption

__all__ = [
    "OBJECTIVES",
    "CausalLM",
    "Classification",
    "ClosedFormHead",
    "ContrastivePairs",
    "LanguageModeling",
    "MaskedLM",
    "Objective",
    "SpanCorruption",
]
