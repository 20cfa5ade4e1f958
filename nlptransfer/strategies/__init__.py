"""Transfer strategies, registered by name (``--strategy NAME``)."""

from nlptransfer.strategies import adapters, feature_extraction, finetune  # noqa: F401  (registers)
from nlptransfer.strategies.base import STRATEGIES, Strategy, get_strategy

__all__ = ["STRATEGIES", "Strategy", "get_strategy"]
