"""``nlptransfer tune``: hyperparameter search over what the run's strategy exposes."""

from nlptransfer.tuning.search import TuneConfig, run_tune
from nlptransfer.tuning.space import Param, search_space

__all__ = ["Param", "TuneConfig", "run_tune", "search_space"]
