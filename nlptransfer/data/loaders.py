"""Torch datasets and collators over encoded examples."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

if TYPE_CHECKING:  # data sits below backbones; only the annotation needs it
    from nlptransfer.backbones import Backbone


def stack_targets(values: list[Any]) -> torch.Tensor:
    """A batch of targets: class ids as int64, label vectors or numbers (numpy rows) as float32."""
    if isinstance(values[0], np.ndarray | torch.Tensor):
        return torch.as_tensor(np.stack([np.asarray(v) for v in values]), dtype=torch.float32)
    return torch.tensor(values, dtype=torch.long)


def targets_tensor(labels: list[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
    """A split's targets as one tensor (class ids int64; label matrices and numbers float32)."""
    if isinstance(labels, torch.Tensor):
        return labels
    if isinstance(labels, np.ndarray) and labels.dtype.kind == "f":
        return torch.tensor(labels, dtype=torch.float32)  # a copy: the array may be read-only
    return torch.as_tensor(np.asarray(labels, dtype=np.int64))


class EncodedDataset(Dataset):
    """Tokenised examples with their targets and position (``idx``) in the split.

    ``labels``: class ids, or a (rows, outputs) matrix of label indicators or numbers.
    """

    def __init__(self, encodings: list[dict[str, Any]], labels: list[int] | np.ndarray) -> None:
        self.encodings = encodings
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.encodings[i], "labels": self.labels[i], "idx": i}

    def lengths(self) -> list[int]:
        return [example_length(e) for e in self.encodings]


def example_length(encoding: dict[str, Any]) -> int:
    """Tokens in one encoded example (all its windows); 1 for inputs of fixed size (images)."""
    if WINDOWS in encoding:
        return sum(len(window["input_ids"]) for window in encoding[WINDOWS])
    return len(encoding["input_ids"]) if "input_ids" in encoding else 1


# A long text read in windows (--long_text chunk): its example holds them under this key, and a
# batch says which example each window belongs to under ``WINDOW_OWNER``.
WINDOWS, WINDOW_OWNER = "windows", "window_owner"
# The activation cache: an example (and a batch, padded like its tokens) carries the hidden states
# its frozen bottom feeds block ``REPLAY_BLOCK`` under ``BLOCK_INPUT``.
BLOCK_INPUT, REPLAY_BLOCK = "block_input", "replay_block"


class ActivationDataset(EncodedDataset):
    """Tokenised examples with the hidden states entering block ``block``, stored flat: rows
    ``offsets[i]:offsets[i + 1]`` of ``states`` (tokens, hidden), e.g. a read-only memory map, are
    example ``i``'s. ``cache_info`` says where they came from (``nlptransfer.engine.activations``)."""

    def __init__(
        self, encoded: EncodedDataset, block: int, states: np.ndarray, offsets: np.ndarray,
        cache_info: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(encoded.encodings, encoded.labels)
        self.block, self.states, self.offsets = block, states, offsets
        self.cache_info = cache_info

    def __getitem__(self, i: int) -> dict[str, Any]:
        # A copy of the example's rows: the memory map is read-only.
        rows = np.array(self.states[self.offsets[i] : self.offsets[i + 1]], dtype=np.float32)
        return {**super().__getitem__(i), BLOCK_INPUT: rows, REPLAY_BLOCK: self.block}


def place_states(rows: list[np.ndarray], attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-example states (tokens, hidden) as one batch padded like ``attention_mask`` (on either
    side); padded positions hold zeros, which attention never reads."""
    batch = torch.zeros(*attention_mask.shape, rows[0].shape[-1])
    for i, row in enumerate(rows):
        batch[i, attention_mask[i].bool()] = torch.from_numpy(row)
    return batch


def collate_examples(backbone: Backbone, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The backbone's padded batch of examples; texts read in windows give one row per window."""
    if WINDOWS not in examples[0]:
        return backbone.collate(examples)
    batch = backbone.collate([window for example in examples for window in example[WINDOWS]])
    owners = [i for i, example in enumerate(examples) for _ in example[WINDOWS]]
    batch[WINDOW_OWNER] = torch.tensor(owners, dtype=torch.long)
    return batch


class FeatureDataset(Dataset):
    """Precomputed body features (one row per example) for frozen-body training.

    ``features`` is a tensor, or a numpy array such as a read-only memory map from
    the feature cache, whose rows are read only when an item is asked for.
    ``cache_info`` says where the features came from (see ``nlptransfer.engine.features``).
    """

    def __init__(
        self,
        features: torch.Tensor | np.ndarray,
        labels: list[int] | np.ndarray | torch.Tensor,
        cache_info: dict[str, Any] | None = None,
    ) -> None:
        self.features = features
        self.labels = targets_tensor(labels)
        self.cache_info = cache_info

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"features": self._row(i), "labels": self.labels[i], "idx": i}

    def _row(self, i: int) -> torch.Tensor:
        if isinstance(self.features, torch.Tensor):
            return self.features[i]
        # Copy the one row: a tensor on a read-only memory map would warn and must not be written.
        return torch.from_numpy(np.array(self.features[i], dtype=np.float32))


class Collator:
    """Pads token inputs with the backbone's own collate; stacks labels and indices."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        extra = ("labels", "idx", BLOCK_INPUT, REPLAY_BLOCK)
        tokens = [{k: v for k, v in item.items() if k not in extra} for item in items]
        batch: dict[str, Any] = collate_examples(self.backbone, tokens)
        if BLOCK_INPUT in items[0]:
            batch[BLOCK_INPUT] = place_states([item[BLOCK_INPUT] for item in items], batch["attention_mask"])
            batch[REPLAY_BLOCK] = items[0][REPLAY_BLOCK]
        batch["labels"] = stack_targets([item["labels"] for item in items])
        batch["idx"] = torch.tensor([item["idx"] for item in items], dtype=torch.long)
        return batch


class EpochSampler(Sampler[int]):
    """A new random order every epoch, fixed by (seed, epoch).

    Every process draws the same order (accelerate then gives each one its own
    batches), and a resumed run redraws exactly the order it stopped in, with no
    generator state to carry over. Call ``set_epoch`` (1-based) before each epoch.

    Epoch ``e`` replays the draws a ``DataLoader(shuffle=True, generator=g)``
    with ``g`` seeded by ``seed`` makes up to its e-th epoch (a worker seed and
    two permutations per epoch), so runs from before resumable training existed
    keep their order and their results.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def order(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(max(self.epoch, 1) - 1):
            self._draw(generator)
        return self._draw(generator)

    def _draw(self, generator: torch.Generator) -> list[int]:
        torch.empty((), dtype=torch.int64).random_(generator=generator)  # the loader's worker seed
        order = torch.randperm(self.size, generator=generator).tolist()
        torch.randperm(self.size, generator=generator)  # RandomSampler's empty remainder draw
        return order

    def __iter__(self):
        return iter(self.order())


class LengthGroupedSampler(EpochSampler):
    """A random order in which neighbouring examples have similar lengths.

    The shuffled data is cut into mega-batches of ``group`` batches, each sorted
    by length, so consecutive batches need little padding yet every epoch is a
    new random order (the idea behind transformers' ``group_by_length``).
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group: int = 50) -> None:
        super().__init__(len(lengths), seed)
        self.lengths = lengths
        self.chunk = batch_size * group

    # The loop draws one global-RNG value per fresh epoch, as earlier token loaders did.
    draws_global_seed = True

    def _draw(self, generator: torch.Generator) -> list[int]:
        return torch.randperm(self.size, generator=generator).tolist()  # one permutation per epoch

    def __iter__(self):
        order = self.order()
        chunks = (order[i : i + self.chunk] for i in range(0, len(order), self.chunk))
        return iter([i for chunk in chunks for i in sorted(chunk, key=lambda j: -self.lengths[j])])
