"""Transfer strategies, registered by name (``--strategy NAME``)."""

from nlptransfer.strategies import (  # noqa: F401  (registers)
    adapters,
    contrastive,
    feature_extraction,
    finetune,
    layerwise,
    lp_ft,
)
from nlptransfer.strategies.base import STRATEGIES, Strategy, get_strategy

__all__ = ["STRATEGIES", "Strategy", "get_strategy"]
