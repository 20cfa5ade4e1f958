"""The trained model: a backbone, a pooling and a head (``TransferModel``), and the trainable-layer table."""

from nlptransfer.model.transfer import TransferModel
from nlptransfer.tasks.answers import Predictions

__all__ = ["Predictions", "TransferModel"]
