"""What the advisor measures about the labelled data itself: size, balance, lengths."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from nlptransfer.backbones import Backbone
from nlptransfer.data import LabelledData
from nlptransfer.tasks.setup import IMBALANCE_RATIO

# Tokenise this many texts to measure lengths: the percentiles settle long before that.
LENGTH_SAMPLE = 2000
# advise recommends --long_text chunk when at least this share of texts (in %) is truncated.
CHUNK_ABOVE_PCT = 20.0
_NO_LIMIT = 1_000_000


# What a regression's examples are counted under in ``DataProfile.per_label``.
ALL_TARGETS = "(all targets)"


@dataclass
class DataProfile:
    num_train: int
    num_validation: int
    num_test: int
    per_label: dict[str, int]
    modality: str = "text"
    max_length: int | None = None
    length_median: float | None = None
    length_p95: float | None = None
    truncated_pct: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def min_per_label(self) -> int:
        return min(self.per_label.values()) if self.per_label else 0

    @property
    def has_classes(self) -> bool:
        """False for a regression, whose targets are counted under one name."""
        return ALL_TARGETS not in self.per_label

    @property
    def imbalance(self) -> float:
        """Largest class over smallest (1.0: balanced)."""
        counts = list(self.per_label.values())
        return max(counts) / max(min(counts), 1) if counts else 1.0

    def with_budget(self, per_label: int | None) -> DataProfile:
        """The profile of a run that keeps ``per_label`` training examples of each label (None: all)."""
        if per_label is None:
            return self
        counts = {name: min(n, per_label) for name, n in self.per_label.items()}
        return DataProfile(**{**asdict(self), "per_label": counts, "num_train": sum(counts.values())})

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "min_per_label": self.min_per_label, "imbalance": round(self.imbalance, 3)}


def profile_data(data: LabelledData, backbone: Backbone, max_length: int, seed: int = 0) -> DataProfile:
    """Sizes, examples per label, balance, and (for text) token lengths against ``max_length``."""
    profile = DataProfile(
        num_train=len(data.train),
        num_validation=len(data.validation),
        num_test=len(data.test) if data.test is not None else 0,
        per_label=examples_per_label(data),
        modality=data.modality,
    )
    if data.problem_type == "single_label_classification" and profile.imbalance >= IMBALANCE_RATIO:
        rarest = min(profile.per_label, key=profile.per_label.__getitem__)
        profile.notes.append(
            f"The classes are imbalanced: the largest has {profile.imbalance:.1f}x the examples of the "
            f"smallest ('{rarest}', {profile.min_per_label}). Training weighs classes as balanced "
            "(--class_weight auto) and picks the best epoch by f1_macro; results.json reports each "
            "class's precision, recall and F1."
        )
    if data.modality != "text":
        return profile
    lengths = token_lengths(backbone, data.train.inputs, data.train.pairs, seed)
    profile.max_length = max_length
    profile.length_median = float(np.median(lengths))
    profile.length_p95 = float(np.percentile(lengths, 95))
    profile.truncated_pct = 100.0 * float(np.mean(lengths > max_length))
    if profile.truncated_pct > 5:
        note = (
            f"{profile.truncated_pct:.1f}% of texts are longer than --max_length {max_length} and lose "
            f"their end; 95% fit in {int(profile.length_p95)} tokens."
        )
        if profile.truncated_pct >= CHUNK_ABOVE_PCT:
            note += (
                f" Pass --long_text chunk to read them whole: windows of {max_length} tokens, overlapping "
                f"by a quarter, pooled per text (a median text has {profile.length_median:.0f} tokens, "
                f"about {max(1, round(profile.length_median / (0.75 * max_length)))} windows)."
            )
        profile.notes.append(note)
    return profile


def examples_per_label(data: LabelledData) -> dict[str, int]:
    """Training examples of each class (each label, for label sets); for a regression, all of them
    under one name: what the size rules read."""
    if data.problem_type == "regression":
        return {ALL_TARGETS: len(data.train)}
    if data.problem_type == "multi_label_classification":
        counts = np.asarray(data.train.labels).sum(0).astype(int).tolist()
        return dict(zip(map(str, data.label_names), counts, strict=True))
    found = Counter(data.label_names[y] for y in data.train.labels)
    return {str(name): found.get(name, 0) for name in data.label_names}


def token_lengths(
    backbone: Backbone, texts: list[str], pairs: list[str] | None, seed: int, sample: int = LENGTH_SAMPLE
) -> np.ndarray:
    """Untruncated token counts of up to ``sample`` texts, drawn with ``seed``."""
    rows = np.random.default_rng(seed).permutation(len(texts))[:sample]
    chosen = [texts[i] for i in rows]
    chosen_pairs = [pairs[i] for i in rows] if pairs else None
    encoded = backbone.tokenize(chosen, chosen_pairs, _NO_LIMIT)
    return np.array([len(ids) for ids in encoded["input_ids"]])
