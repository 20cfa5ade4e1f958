"""What the advisor measures about the labelled data itself: size, balance, lengths."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from nlptransfer.backbones import Backbone
from nlptransfer.data import LabelledData

# Tokenise this many texts to measure lengths: the percentiles settle long before that.
LENGTH_SAMPLE = 2000
_NO_LIMIT = 1_000_000


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
    """Sizes, examples per label, and (for text) token lengths against ``max_length``."""
    counts = Counter(data.label_names[y] for y in data.train.labels)
    profile = DataProfile(
        num_train=len(data.train),
        num_validation=len(data.validation),
        num_test=len(data.test) if data.test is not None else 0,
        per_label={str(name): counts.get(name, 0) for name in data.label_names},
        modality=data.modality,
    )
    if data.modality != "text":
        return profile
    lengths = token_lengths(backbone, data.train.inputs, data.train.pairs, seed)
    profile.max_length = max_length
    profile.length_median = float(np.median(lengths))
    profile.length_p95 = float(np.percentile(lengths, 95))
    profile.truncated_pct = 100.0 * float(np.mean(lengths > max_length))
    if profile.truncated_pct > 5:
        profile.notes.append(
            f"{profile.truncated_pct:.1f}% of texts are longer than --max_length {max_length} and lose "
            f"their end; 95% fit in {int(profile.length_p95)} tokens."
        )
    return profile


def token_lengths(
    backbone: Backbone, texts: list[str], pairs: list[str] | None, seed: int, sample: int = LENGTH_SAMPLE
) -> np.ndarray:
    """Untruncated token counts of up to ``sample`` texts, drawn with ``seed``."""
    rows = np.random.default_rng(seed).permutation(len(texts))[:sample]
    chosen = [texts[i] for i in rows]
    chosen_pairs = [pairs[i] for i in rows] if pairs else None
    encoded = backbone.tokenize(chosen, chosen_pairs, _NO_LIMIT)
    return np.array([len(ids) for ids in encoded["input_ids"]])
