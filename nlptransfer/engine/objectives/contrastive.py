"""Contrastive few-shot body training: the idea SetFit popularised.

Pairs of training texts are labelled 1 (same class) or 0 (different classes);
the body learns to make the cosine similarity of their embeddings match that
label. A head is then fitted on the tuned body's embeddings (another phase).
Pairs are sampled, never enumerated: their number is linear in the data and
capped by ``--max_pairs``, whatever the number of classes or examples.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from nlptransfer.data import EncodedDataset, EpochSampler
from nlptransfer.data.loaders import collate_examples
from nlptransfer.engine.objectives.base import OBJECTIVES, Objective
from nlptransfer.errors import ConfigError
from nlptransfer.tasks.base import Regression

if TYPE_CHECKING:
    from nlptransfer.engine.fit import PhaseRun

logger = logging.getLogger(__name__)


def sample_pairs(
    labels: list[int] | np.ndarray, iterations: int, max_pairs: int, seed: int, balanced: bool = False
) -> np.ndarray:
    """(pairs, 3) rows of (index a, index b, target similarity), half positive and half negative.

    Each round gives every anchor one partner from its class and one from another class
    (SetFit's scheme); rounds stop at ``max_pairs``. ``labels``: class ids, or a 0/1 label matrix
    (multi-label: a partner shares a label, or shares none, and the target is the Jaccard overlap
    of the two label sets). ``balanced``: anchors are drawn so that each class gives as many.
    """
    labels_arr = np.asarray(labels)
    rng = np.random.default_rng(seed)
    anchors = np.arange(len(labels_arr))
    rounds = min(iterations, max(1, math.ceil(max_pairs / (2 * len(anchors)))))
    if labels_arr.ndim == 2:
        rows = _label_set_pairs(labels_arr.astype(bool), rounds, rng)
    else:
        rows = _class_pairs(labels_arr, rounds, rng, balanced)
    pairs = np.asarray(rows, dtype=np.float64)
    if len(pairs) > max_pairs:
        pairs = pairs[rng.choice(len(pairs), max_pairs, replace=False)]
    return pairs


def _class_pairs(labels: np.ndarray, rounds: int, rng: np.random.Generator, balanced: bool) -> list[tuple]:
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise ConfigError("Contrastive training needs examples of at least two labels.")
    members = {c: np.flatnonzero(labels == c) for c in classes}
    others = {c: np.flatnonzero(labels != c) for c in classes}
    weight = (1.0 / counts)[np.searchsorted(classes, labels)] if balanced else None
    rows = []
    for _ in range(rounds):
        order = (
            rng.choice(len(labels), len(labels), p=weight / weight.sum())
            if balanced
            else rng.permutation(len(labels))
        )
        for a in order:
            c = labels[a]
            same = members[c]
            # A class with one example pairs it with itself: still a valid positive.
            rows.append((a, same[rng.integers(len(same))], 1.0))
            rows.append((a, others[c][rng.integers(len(others[c]))], 0.0))
    return rows


def _label_set_pairs(sets: np.ndarray, rounds: int, rng: np.random.Generator) -> list[tuple]:
    members = [np.flatnonzero(column) for column in sets.T]
    empty = np.flatnonzero(~sets.any(1))

    def overlap(a: int, b: int) -> float:
        union = (sets[a] | sets[b]).sum()
        return 1.0 if union == 0 else float((sets[a] & sets[b]).sum() / union)

    rows = []
    for _ in range(rounds):
        for a in rng.permutation(len(sets)):
            own = np.flatnonzero(sets[a])
            pool = members[own[rng.integers(len(own))]] if len(own) else empty
            b = pool[rng.integers(len(pool))]
            # A partner sharing no label: a few random draws (label sets overlap often).
            candidates = rng.integers(len(sets), size=8)
            c = next((int(i) for i in candidates if not (sets[a] & sets[i]).any()), int(candidates[0]))
            rows += [(a, b, overlap(a, b)), (a, c, overlap(a, c))]
    return rows


class PairDataset(Dataset):
    """Pairs over an encoded split: both sides' tokens and the 0/1 target."""

    def __init__(self, encoded: EncodedDataset, pairs: np.ndarray) -> None:
        self.encoded = encoded
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        a, b, target = self.pairs[i]
        return {
            "a": self.encoded.encodings[int(a)],
            "b": self.encoded.encodings[int(b)],
            "target": float(target),
        }


class PairCollator:
    """One padded batch holding all first texts, then all second texts (one forward pass)."""

    def __init__(self, backbone: Any) -> None:
        self.backbone = backbone

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = collate_examples(self.backbone, [item["a"] for item in items] + [item["b"] for item in items])
        batch["target"] = torch.tensor([item["target"] for item in items], dtype=torch.float32)
        return batch


@OBJECTIVES.register("contrastive")
class ContrastivePairs(Objective):
    """The body trained on sampled pairs with SetFit's cosine-similarity loss."""

    desc = "pairs epoch"

    def __init__(
        self, train: EncodedDataset, backbone: Any, batch_size: int, seed: int, pairs: np.ndarray
    ) -> None:
        self.train, self.backbone, self.batch_size, self.seed, self.pairs = (
            train,
            backbone,
            batch_size,
            seed,
            pairs,
        )
        self.sampler = EpochSampler(len(pairs), seed)

    @classmethod
    def from_phase(cls, run: PhaseRun) -> ContrastivePairs:
        config, train = run.ctx.config, run.datasets["train"]
        if not isinstance(train, EncodedDataset):
            raise ConfigError("The contrastive phase trains the body and needs tokenised inputs.")
        task = run.model.task
        if isinstance(task, Regression):
            raise ConfigError(
                f"The contrastive strategy pairs examples by their labels; a {task.name} task has none. "
                "Use feature-extraction, finetune or an adapter strategy."
            )
        balanced = getattr(task, "class_weights", None) is not None
        pairs = sample_pairs(
            train.labels, config.contrastive_iterations, config.max_pairs, config.seed, balanced
        )
        logger.info(
            "contrastive: %d pairs (%d positive) from %d examples",
            len(pairs),
            (pairs[:, 2] > 0).sum(),
            len(train),
        )
        return cls(train, run.model.backbone, config.batch_size, config.seed + run.index, pairs)

    def loader(self) -> DataLoader:
        return DataLoader(
            PairDataset(self.train, self.pairs), batch_size=self.batch_size, sampler=self.sampler,
            generator=torch.Generator().manual_seed(self.seed), collate_fn=PairCollator(self.backbone),
        )  # fmt: skip

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return pair_loss(model, batch)


def pair_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """SetFit's loss: the cosine similarity of the two embeddings should be the 0/1 target."""
    target = batch.pop("target")
    u, v = model(return_embeddings=True, **batch).chunk(2)
    return F.mse_loss(F.cosine_similarity(u, v), target)
