"""The trained model: a backbone, a pooling and a head (``TransferModel``), and the trainable-layer table."""

from nlptransfer.model.transfer import Predictions, TransferModel

__all__ = ["Predictions", "TransferModel"]
