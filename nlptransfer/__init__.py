"""nlptransfer: transfer learning for NLP (and images) in one command.

The options and errors load at once; everything that needs torch or transformers loads on
first use (``from nlptransfer import TransferModel``), so ``import nlptransfer`` and
``nlptransfer --help`` take a fraction of a second.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
from nlptransfer.registry import lazy_attributes
from nlptransfer.version import __version__

if TYPE_CHECKING:
    from nlptransfer.backbones import Backbone
    from nlptransfer.export.onnx import export_onnx
    from nlptransfer.export.runtime import OnnxModel
    from nlptransfer.model.layers import format_table, trainable_rows
    from nlptransfer.model.transfer import TransferModel, load_backbone
    from nlptransfer.runs.embed import EmbedConfig, embed
    from nlptransfer.runs.finetune import train
    from nlptransfer.runs.pretrain import PretrainConfig
    from nlptransfer.strategies import STRATEGIES, get_strategy
    from nlptransfer.tasks.answers import Predictions

# name -> the module that defines it, imported when the name is first used.
_LAZY = {
    "Backbone": "nlptransfer.backbones",
    "EmbedConfig": "nlptransfer.runs.embed",
    "OnnxModel": "nlptransfer.export.runtime",
    "embed": "nlptransfer.runs.embed",
    "export_onnx": "nlptransfer.export.onnx",
    "format_table": "nlptransfer.model.layers",
    "trainable_rows": "nlptransfer.model.layers",
    "Predictions": "nlptransfer.tasks.answers",
    "TransferModel": "nlptransfer.model.transfer",
    "load_backbone": "nlptransfer.model.transfer",
    "train": "nlptransfer.runs.finetune",
    "PretrainConfig": "nlptransfer.runs.pretrain",
    "STRATEGIES": "nlptransfer.strategies",
    "get_strategy": "nlptransfer.strategies",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)

__all__ = [
    "STRATEGIES",
    "Backbone",
    "ConfigError",
    "DataError",
    "EmbedConfig",
    "FinetuneConfig",
    "ModelLoadError",
    "NLPTransferError",
    "OnnxModel",
    "OutputDirExistsError",
    "Predictions",
    "PretrainConfig",
    "SaveError",
    "TrainingError",
    "TrainingInterrupted",
    "TransferModel",
    "UnknownNameError",
    "__version__",
    "embed",
    "export_onnx",
    "format_table",
    "get_strategy",
    "load_backbone",
    "train",
    "trainable_rows",
]
