"""Compare strategies on the user's own data: label budgets x seeds, a report, the advisor's pick."""

from nlptransfer.comparison.run import run_comparison
from nlptransfer.comparison.sweep import Cell, CompareConfig, cell_config, plan, summarise

__all__ = ["Cell", "CompareConfig", "cell_config", "plan", "run_comparison", "summarise"]
