"""Contrastive few-shot body training: the idea SetFit popularised.

Pairs of training texts are labelled 1 (same class) or 0 (different classes);
the body learns to make the cosine similarity of their embeddings match that
label. A head is then fitted on the tuned body's embeddings (another phase).

Two ways to get the pairs (``--pair_sampling``):

- drawn up front, each batch holding pairs (``ContrastivePairs``): SetFit 1.x's ``oversampling``
  (every pair once, the rarer kind repeated until positives and negatives are as many) or SetFit
  0.x's ``iterations`` (``--contrastive_iterations`` of each kind per example); at most
  ``--max_pairs`` either way;
- ``in-batch`` (``InBatchPairs``): each batch holds examples, and the loss covers every pair of
  them, positives and negatives weighed half and half. One forward pass of B texts scores
  B(B-1)/2 pairs instead of B/2, so an epoch costs one pass over the examples.

Both read the phase's token datasets as they are, so a body trained on its top layers only
starts from the stored activations of its frozen bottom (``nlptransfer.engine.activations``).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from nlptransfer.data import Collator, EncodedDataset, EpochSampler
from nlptransfer.data.loaders import WINDOW_OWNER
from nlptransfer.engine.objectives.base import OBJECTIVES, Objective
from nlptransfer.errors import ConfigError
from nlptransfer.tasks.base import Regression

if TYPE_CHECKING:
    from nlptransfer.backbones import Backbone
    from nlptransfer.engine.fit import PhaseRun

logger = logging.getLogger(__name__)

# Enumerating every pair costs memory quadratic in the examples: past this many, pairs are drawn.
ENUMERATE_AT_MOST = 2_000_000
# In-batch pairs on a CPU: texts embedded this many at a time, by length (``embed_by_length``).
LENGTH_CHUNK = 8


def oversampled_pairs(labels: list[int] | np.ndarray, max_pairs: int, seed: int) -> np.ndarray:
    """SetFit 1.x's default pairs: every pair of examples once (an example with itself included),
    the rarer of positives and negatives repeated until they are as many as the other; at most
    ``max_pairs``, half of each kind. Rows as ``sample_pairs``'s. Past ``ENUMERATE_AT_MOST``
    possible pairs, ``max_pairs`` pairs are drawn as ``sample_pairs`` draws them."""
    labels_arr = np.asarray(labels)
    n = len(labels_arr)
    if n * (n + 1) // 2 > ENUMERATE_AT_MOST:
        return sample_pairs(labels_arr, math.ceil(max_pairs / (2 * n)), max_pairs, seed)
    first, second = np.triu_indices(n)
    targets = pair_targets(*(torch.from_numpy(a) for a in (labels_arr, first, second))).numpy()
    if not (targets == 0).any() and labels_arr.ndim == 1:
        raise ConfigError("Contrastive training needs examples of at least two labels.")
    rng = np.random.default_rng(seed)
    positive, negative = np.flatnonzero(targets > 0), np.flatnonzero(targets == 0)
    each = min(max(len(positive), len(negative)), max_pairs // 2)
    chosen = np.concatenate([_repeat_to(rng.permutation(kind), each) for kind in (positive, negative)])
    return np.stack([first[chosen], second[chosen], targets[chosen]], axis=1).astype(np.float64)


def _repeat_to(indices: np.ndarray, count: int) -> np.ndarray:
    if len(indices) == 0:
        return indices
    return np.resize(indices, count)  # cycles through them, as SetFit's oversampling does


def pair_targets(labels: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The target similarity of pairs: 1 for the same class, 0 otherwise; for label sets (a 0/1
    matrix) the Jaccard overlap. On the labels' device: a training step reads nothing back."""
    if labels.ndim == 1:
        return (labels[first] == labels[second]).double()
    sets = labels.bool()
    shared = (sets[first] & sets[second]).sum(1)
    union = (sets[first] | sets[second]).sum(1)
    return torch.where(union == 0, 1.0, shared / union.clamp(min=1)).double()


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
    """Pairs over an encoded split: both sides' examples (tokens, and stored activations if the
    split has them) and the target similarity."""

    def __init__(self, encoded: EncodedDataset, pairs: np.ndarray) -> None:
        self.encoded = encoded
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        a, b, target = self.pairs[i]
        return {"a": self.encoded[int(a)], "b": self.encoded[int(b)], "target": float(target)}


class PairCollator:
    """One padded batch holding all first texts, then all second texts (one forward pass)."""

    def __init__(self, backbone: Backbone) -> None:
        self.collate = Collator(backbone)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.collate([item["a"] for item in items] + [item["b"] for item in items])
        del batch["labels"], batch["idx"]
        batch["target"] = torch.tensor([item["target"] for item in items], dtype=torch.float32)
        return batch


def _pairable_train(run: PhaseRun) -> EncodedDataset:
    """The training split of a contrastive phase, after checking the phase can pair its examples."""
    train = run.datasets["train"]
    if not isinstance(train, EncodedDataset):
        raise ConfigError("The contrastive phase trains the body and needs tokenised inputs.")
    task = run.model.task
    if isinstance(task, Regression):
        raise ConfigError(
            f"The contrastive strategy pairs examples by their labels; a {task.name} task has none. "
            "Use feature-extraction, finetune or an adapter strategy."
        )
    return train


@OBJECTIVES.register("contrastive")
class ContrastivePairs(Objective):
    """The body trained on pairs drawn up front, with SetFit's cosine-similarity loss."""

    desc = "pairs epoch"
    reads_activations = True

    def __init__(
        self, train: EncodedDataset, backbone: Backbone, batch_size: int, seed: int, pairs: np.ndarray
    ) -> None:
        self.train, self.backbone, self.batch_size = train, backbone, batch_size
        self.seed, self.pairs = seed, pairs
        self.sampler = EpochSampler(len(pairs), seed)

    @classmethod
    def from_phase(cls, run: PhaseRun) -> ContrastivePairs:
        config, train = run.ctx.config, _pairable_train(run)
        if config.pair_sampling == "oversampling":
            pairs = oversampled_pairs(train.labels, config.max_pairs, config.seed)
        else:
            balanced = getattr(run.model.task, "class_weights", None) is not None
            pairs = sample_pairs(
                train.labels, config.contrastive_iterations, config.max_pairs, config.seed, balanced
            )
        logger.info(
            "contrastive: %d pairs (%d positive, %s) from %d examples",
            len(pairs), (pairs[:, 2] > 0).sum(), config.pair_sampling, len(train),
        )  # fmt: skip
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


@OBJECTIVES.register("contrastive-in-batch")
class InBatchPairs(Objective):
    """The body trained on every pair within each batch of examples (SetFit's loss over all of them).

    Batches are drawn at random, not grouped by length: grouped, texts of different lengths would
    never be paired.
    """

    desc = "pairs epoch"
    reads_activations = True
    # An epoch is one pass over the examples: a few steps in few-shot training, which runs many.
    checkpoint_every_epoch = False

    def __init__(
        self, train: EncodedDataset, backbone: Backbone, batch_size: int, seed: int,
        seen: list[int] | None = None,
    ) -> None:  # fmt: skip
        self.train, self.backbone, self.batch_size, self.seed = train, backbone, batch_size, seed
        self.sampler = EpochSampler(len(train), seed)
        self.seen, self.epoch = seen, 1

    @classmethod
    def from_phase(cls, run: PhaseRun) -> InBatchPairs:
        config, train = run.ctx.config, _pairable_train(run)
        labels = np.asarray(train.labels)
        if labels.ndim == 1 and len(np.unique(labels)) < 2:
            raise ConfigError("Contrastive training needs examples of at least two labels.")
        batch = min(config.pair_batch_size, len(train))
        logger.info("contrastive: every pair within batches of %d examples (%d pairs each)",
                    batch, batch * (batch - 1) // 2)  # fmt: skip
        return cls(train, run.model.backbone, config.pair_batch_size, config.seed + run.index, run.seen)

    def loader(self) -> DataLoader:
        return DataLoader(
            self.train, batch_size=self.batch_size, sampler=self.sampler,
            generator=torch.Generator().manual_seed(self.seed), collate_fn=Collator(self.backbone),
        )  # fmt: skip

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = batch.pop("labels")
        del batch["idx"]  # read on the host by the loop (observe)
        return in_batch_pair_loss(embed_by_length(model, batch), labels)


def embed_by_length(model: Any, batch: dict[str, Any], size: int = LENGTH_CHUNK) -> torch.Tensor:
    """The embeddings of a batch, computed ``size`` texts at a time in order of length, each chunk
    cut to its longest text; in the batch's order. A random batch is padded to its longest text, so
    on a CPU, where every padded token costs as much as a real one, this saves most of the padding.
    A GPU runs the batch whole (it would wait for the lengths to be read back), and so does a model
    wrapped for several processes (one forward pass per step, as DistributedDataParallel expects)."""
    mask = batch.get("attention_mask")
    whole = mask is None or mask.ndim != 2 or len(mask) <= size or WINDOW_OWNER in batch
    if whole or mask.device.type != "cpu" or isinstance(model, DistributedDataParallel):
        return model(return_embeddings=True, **batch)
    lengths = mask.sum(1)
    order = torch.argsort(lengths)
    parts = []
    for chunk in order.split(size):
        longest = int(lengths[chunk].max())
        parts.append(model(return_embeddings=True, **_rows(batch, chunk, mask.shape[1], longest)))
    return parts[0].new_empty((len(mask), parts[0].shape[-1])).index_copy(0, order, torch.cat(parts))


def _rows(batch: dict[str, Any], rows: torch.Tensor, width: int, keep: int) -> dict[str, Any]:
    """Rows of a padded batch, their token positions cut to the first ``keep`` (right padding: a
    left-padded batch has tokens in its last columns, and is not cut)."""
    right_padded = bool(batch["attention_mask"][rows, keep:].sum() == 0)
    out = {}
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor) or value.ndim == 0:
            out[key] = value
            continue
        value = value[rows]
        if right_padded and value.ndim >= 2 and value.shape[1] == width:
            value = value[:, :keep]
        out[key] = value
    return out


def in_batch_pair_loss(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SetFit's squared error between cosine similarity and target, over every pair of the batch;
    positives and negatives weigh half each (as SetFit's oversampling makes them as many)."""
    first, second = torch.triu_indices(len(labels), len(labels), offset=1, device=embeddings.device)
    if len(first) == 0:  # a batch of one example has no pair
        return embeddings.sum() * 0.0
    unit = F.normalize(embeddings, dim=-1)
    similarity = (unit[first] * unit[second]).sum(-1)
    target = pair_targets(labels.to(embeddings.device), first, second).to(similarity.dtype)
    positive = target > 0
    weight = torch.where(positive, 1.0 / positive.sum().clamp(min=1), 1.0 / (~positive).sum().clamp(min=1))
    weight = weight / weight.sum()
    return (weight * (similarity - target) ** 2).sum()
