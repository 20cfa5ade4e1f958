"""When to do what: measure the user's data, the domain gap and the compute; pick a strategy."""

from nlptransfer.advisor.advise import AdviseConfig, Measurements, advise, measure, render
from nlptransfer.advisor.arms import ARMS, Arm, get_arm, schedule
from nlptransfer.advisor.familiarity import Familiarity, measure_familiarity
from nlptransfer.advisor.profile import DataProfile, profile_data
from nlptransfer.advisor.rules import MATRIX, Recommendation, recommend, size_class

__all__ = [
    "ARMS",
    "MATRIX",
    "AdviseConfig",
    "Arm",
    "DataProfile",
    "Familiarity",
    "Measurements",
    "Recommendation",
    "advise",
    "get_arm",
    "measure",
    "measure_familiarity",
    "profile_data",
    "recommend",
    "render",
    "schedule",
    "size_class",
]
