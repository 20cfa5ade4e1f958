"""Data loading, validation, label maps, splits and collators.

Names load on first use, so reading a table (``read_table``) does not import torch: the ONNX
runtime's ``predict`` reads files without it."""

from typing import TYPE_CHECKING

from nlptransfer.registry import lazy_attributes

if TYPE_CHECKING:
    from nlptransfer.data.corpora import BUILTIN_DATASETS
    from nlptransfer.data.loaders import (
        ActivationDataset,
        Collator,
        EncodedDataset,
        EpochSampler,
        FeatureDataset,
        LengthGroupedSampler,
    )
    from nlptransfer.data.prepare import LabelledData, Split, load_data
    from nlptransfer.data.sources import MissingColumnsError, read_table, read_texts

_LOADERS = "nlptransfer.data.loaders"
_PREPARE = "nlptransfer.data.prepare"
_SOURCES = "nlptransfer.data.sources"
_LAZY = {
    "BUILTIN_DATASETS": "nlptransfer.data.corpora",
    "ActivationDataset": _LOADERS,
    "Collator": _LOADERS,
    "EncodedDataset": _LOADERS,
    "EpochSampler": _LOADERS,
    "FeatureDataset": _LOADERS,
    "LengthGroupedSampler": _LOADERS,
    "LabelledData": _PREPARE,
    "Split": _PREPARE,
    "load_data": _PREPARE,
    "MissingColumnsError": _SOURCES,
    "read_table": _SOURCES,
    "read_texts": _SOURCES,
}

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)

__all__ = [
    "BUILTIN_DATASETS",
    "ActivationDataset",
    "Collator",
    "EncodedDataset",
    "EpochSampler",
    "FeatureDataset",
    "LabelledData",
    "LengthGroupedSampler",
    "MissingColumnsError",
    "Split",
    "load_data",
    "read_table",
    "read_texts",
]
