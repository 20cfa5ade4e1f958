"""nlptransfer: transfer learning for NLP (and images) in one command."""

from nlptransfer.backbones import Backbone
from nlptransfer.config import FinetuneConfig
from nlptransfer.errors import (
    ConfigError,
    DataError,
    ModelLoadError,
    NLPTransferError,
    OutputDirExistsError,
    SaveError,
    TrainingError,
    TrainingInterrupted,
    UnknownNameError,
)
from nlptransfer.model.layers import format_table, trainable_rows
from nlptransfer.model.transfer import Predictions, TransferModel, load_backbone
from nlptransfer.runs.finetune import train
from nlptransfer.runs.pretrain import PretrainConfig
from nlptransfer.strategies import STRATEGIES, get_strategy
from nlptransfer.version import __version__

__all__ = [
    "STRATEGIES",
    "Backbone",
    "ConfigError",
    "DataError",
    "FinetuneConfig",
    "ModelLoadError",
    "NLPTransferError",
    "OutputDirExistsError",
    "Predictions",
    "PretrainConfig",
    "SaveError",
    "TrainingError",
    "TrainingInterrupted",
    "TransferModel",
    "UnknownNameError",
    "__version__",
    "format_table",
    "get_strategy",
    "load_backbone",
    "train",
    "trainable_rows",
]
