"""When to do what: measure the user's data, the domain gap and the compute; pick a strategy.

Names load on first use: ``runs.finetune`` reads ``advisor.auto`` without importing the rest
(``advise`` itself builds on runs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nlptransfer.registry import lazy_attributes

if TYPE_CHECKING:
    from nlptransfer.advisor.advise import AdviseConfig, Measurements, measure, render
    from nlptransfer.advisor.arms import ARMS, Arm, get_arm, schedule
    from nlptransfer.advisor.familiarity import Familiarity, measure_familiarity
    from nlptransfer.advisor.profile import DataProfile, profile_data
    from nlptransfer.advisor.rules import MATRIX, Recommendation, recommend, size_class

_MODULES = {
    # Not the function `advise`: it shares its name with its module, which would shadow it here.
    "nlptransfer.advisor.advise": ("AdviseConfig", "Measurements", "measure", "render"),
    "nlptransfer.advisor.arms": ("ARMS", "Arm", "get_arm", "schedule"),
    "nlptransfer.advisor.familiarity": ("Familiarity", "measure_familiarity"),
    "nlptransfer.advisor.profile": ("DataProfile", "profile_data"),
    "nlptransfer.advisor.rules": ("MATRIX", "Recommendation", "recommend", "size_class"),
}
__getattr__, __dir__ = lazy_attributes(__name__, {name: m for m, names in _MODULES.items() for name in names})

__all__ = [
    "ARMS",
    "MATRIX",
    "AdviseConfig",
    "Arm",
    "DataProfile",
    "Familiarity",
    "Measurements",
    "Recommendation",
    "get_arm",
    "measure",
    "measure_familiarity",
    "profile_data",
    "recommend",
    "render",
    "schedule",
    "size_class",
]
