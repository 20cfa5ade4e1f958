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
from nlptransfer.engine.objectives.base import OBJECTIVES, Objective
from nlptransfer.errors import ConfigError

if TYPE_CHECKING:
    from nlptransfer.engine.fit import PhaseRun

logger = logging.getLogger(__name__)


def sample_pairs(labels: list[int], iterations: int, max_pairs: int, seed: int) -> np.ndarray:
    """(pairs, 3) rows of (index a, index b, same class 0/1), half positive and half negative.

    Each round gives every anchor one partner from its class and one from
    another class (SetFit's scheme); rounds stop at ``max_pairs``.
    """
    labels_arr = np.asarray(labels)
    classes = np.unique(labels_arr)
    if len(classes) < 2:
        raise ConfigError("Contrastive training needs examples of at least two labels.")
    members = {c: np.flatnonzero(labels_arr == c) for c in classes}
    others = {c: np.flatnonzero(labels_arr != c) for c in classes}
    anchors = np.arange(len(labels_arr))
    rng = np.random.default_rng(seed)
    rounds = min(iterations, max(1, math.ceil(max_pairs / (2 * len(anchors)))))
    rows = []
    for _ in range(rounds):
        for a in rng.permutation(anchors):
            c = labels_arr[a]
            same = members[c]
            # A class with one example pairs it with itself: still a valid positive.
            rows.append((a, same[rng.integers(len(same))], 1))
            rows.append((a, others[c][rng.integers(len(others[c]))], 0))
    pairs = np.asarray(rows, dtype=np.int64)
    if len(pairs) > max_pairs:
        pairs = pairs[rng.choice(len(pairs), max_pairs, replace=False)]
    return pairs


class PairDataset(Dataset):
    """Pairs over an encoded split: both sides' tokens and the 0/1 target."""

    def __init__(self, encoded: EncodedDataset, pairs: np.ndarray) -> None:
        self.encoded = encoded
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        a, b, same = (int(v) for v in self.pairs[i])
        return {"a": self.encoded.encodings[a], "b": self.encoded.encodings[b], "target": float(same)}


class PairCollator:
    """One padded batch holding all first texts, then all second texts (one forward pass)."""

    def __init__(self, backbone: Any) -> None:
        self.backbone = backbone

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.backbone.collate([item["a"] for item in items] + [item["b"] for item in items])
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
        pairs = sample_pairs(train.labels, config.contrastive_iterations, config.max_pairs, config.seed)
        logger.info(
            "contrastive: %d pairs (%d positive) from %d examples", len(pairs), pairs[:, 2].sum(), len(train)
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
