"""Data loading, validation, label maps, splits and collators."""

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
