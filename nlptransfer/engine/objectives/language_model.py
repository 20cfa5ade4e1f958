"""Language-model objectives for domain-adaptive pretraining: masked-LM, causal-LM, span corruption.

Each draws an example's noise (its masks or spans) from (seed, epoch, example index): the same
masks on any number of processes and after a resume; the held-out set always uses epoch -1.
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

import torch
from torch.utils.data import DataLoader, Dataset

from nlptransfer.data import LengthGroupedSampler
from nlptransfer.engine.objectives.base import OBJECTIVES, Objective
from nlptransfer.errors import ModelLoadError

_HELDOUT_EPOCH = -1


class TokenDataset(Dataset):
    def __init__(self, ids: list[list[int]]) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.ids[i], "idx": i}


class _Collator:
    """Pads, and draws each example's noise from (seed, epoch, example index)."""

    def __init__(self, tokenizer: Any, seed: int) -> None:
        self.tokenizer = tokenizer
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def generator(self, idx: int) -> torch.Generator:
        return torch.Generator().manual_seed(hash((self.seed, self.epoch, idx)) & 0x7FFF_FFFF_FFFF)

    def pad(self, rows: list[list[int]], value: int) -> torch.Tensor:
        width = max(len(r) for r in rows)
        return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


class MLMCollator(_Collator):
    """BERT's masking: of the chosen tokens, 80% become [MASK], 10% a random token, 10% stay."""

    def __init__(self, tokenizer: Any, seed: int, probability: float) -> None:
        super().__init__(tokenizer, seed)
        if tokenizer.mask_token_id is None:
            raise ModelLoadError("Masked-LM needs a tokenizer with a mask token; use --objective clm.")
        self.probability = probability
        self.special = set(tokenizer.all_special_ids)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        inputs, labels = [], []
        for item in items:
            ids, target = self._mask(item["input_ids"], self.generator(item["idx"]))
            inputs.append(ids)
            labels.append(target)
        input_ids = self.pad(inputs, self.tokenizer.pad_token_id)
        attention = self.pad([[1] * len(r) for r in inputs], 0)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": self.pad(labels, -100)}

    def _mask(self, ids: list[int], generator: torch.Generator) -> tuple[list[int], list[int]]:
        tokens = torch.tensor(ids)
        candidates = torch.tensor([i not in self.special for i in ids])
        chosen = (torch.rand(len(ids), generator=generator) < self.probability) & candidates
        if not chosen.any() and candidates.any():  # every text teaches something
            chosen[torch.nonzero(candidates)[0]] = True
        roll = torch.rand(len(ids), generator=generator)
        random_ids = torch.randint(len(self.tokenizer), (len(ids),), generator=generator)
        masked = tokens.clone()
        masked[chosen & (roll < 0.8)] = self.tokenizer.mask_token_id
        swap = chosen & (roll >= 0.8) & (roll < 0.9)
        masked[swap] = random_ids[swap]
        labels = torch.where(chosen, tokens, torch.full_like(tokens, -100))
        return masked.tolist(), labels.tolist()


class CLMCollator(_Collator):
    """Next-token prediction; padding (which may be the EOS token) is never a target."""

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [item["input_ids"] for item in items]
        input_ids = self.pad(rows, self.tokenizer.pad_token_id)
        attention = self.pad([[1] * len(r) for r in rows], 0)
        labels = input_ids.masked_fill(attention == 0, -100)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


class SpanCollator(_Collator):
    """T5's span corruption: noise spans become sentinels in the input; the target spells them out."""

    def __init__(self, tokenizer: Any, seed: int, density: float, mean_span: float) -> None:
        super().__init__(tokenizer, seed)
        self.sentinels = _sentinel_ids(tokenizer)
        self.density, self.mean_span = density, mean_span
        self.eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pairs = [self._corrupt(item["input_ids"], self.generator(item["idx"])) for item in items]
        inputs = [p[0] for p in pairs]
        input_ids = self.pad(inputs, self.tokenizer.pad_token_id)
        attention = self.pad([[1] * len(r) for r in inputs], 0)
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": self.pad([p[1] for p in pairs], -100),
        }

    def _corrupt(self, ids: list[int], generator: torch.Generator) -> tuple[list[int], list[int]]:
        body = ids[:-1] if ids and ids[-1] == self.eos else list(ids)
        n = len(body)
        noise = min(max(1, round(n * self.density)), max(n - 1, 1))
        spans = min(max(1, round(noise / self.mean_span)), len(self.sentinels), max(n - noise, 1))
        mask = _span_mask(n, noise, spans, generator)
        source, target, span = [], [], -1
        for token, is_noise in zip(body, mask, strict=True):
            if is_noise:
                if span < 0 or not source or source[-1] != self.sentinels[span]:
                    span += 1
                    source.append(self.sentinels[span])
                    target.append(self.sentinels[span])
                target.append(token)
            else:
                source.append(token)
        return [*source, self.eos], [*target, self.eos]


def _span_mask(n: int, noise: int, spans: int, generator: torch.Generator) -> list[bool]:
    """Interleave ``spans`` noise segments with ``spans`` kept segments, lengths drawn at random."""
    noise_lengths = _segments(noise, spans, generator)
    kept_lengths = _segments(n - noise, spans, generator) if n > noise else [0] * spans
    mask: list[bool] = []
    for kept, noisy in zip(kept_lengths, noise_lengths, strict=True):
        mask += [False] * kept + [True] * noisy
    return mask[:n] + [False] * (n - len(mask))


def _segments(total: int, count: int, generator: torch.Generator) -> list[int]:
    """``count`` lengths summing to ``total``, each at least 1 when ``total >= count``."""
    if total < count:
        return _even(total, count)
    cuts = sorted((torch.randperm(total - 1, generator=generator)[: count - 1] + 1).tolist())
    bounds = [0, *cuts, total]
    return [b - a for a, b in itertools.pairwise(bounds)]


def _even(total: int, count: int) -> list[int]:
    return [total // count + (1 if i < total % count else 0) for i in range(count)]


def _sentinel_ids(tokenizer: Any) -> list[int]:
    ids = []
    for i in range(100):
        token = f"<extra_id_{i}>"
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            break
        ids.append(token_id)
    if not ids:
        raise ModelLoadError(
            "Span corruption needs T5's sentinel tokens (<extra_id_0>, ...) in the tokenizer; this one has "
            "none. Use a T5 tokenizer, or --objective clm."
        )
    return ids


class LanguageModeling(Objective):
    """A model's own pretraining loss (``model(**batch).loss``) on length-grouped batches of texts."""

    desc = "pretrain epoch"
    # Causal LMs shift labels inside the model: the first position is never predicted.
    causal: ClassVar[bool] = False

    def __init__(self, collator: _Collator, train: TokenDataset, batch_size: int, seed: int) -> None:
        self.collator, self.train, self.batch_size, self.seed = collator, train, batch_size, seed
        self.sampler = LengthGroupedSampler([len(ids) for ids in train.ids], batch_size, seed)

    def loader(self) -> DataLoader:
        return DataLoader(
            self.train, batch_size=self.batch_size, sampler=self.sampler, collate_fn=self.collator,
            generator=torch.Generator().manual_seed(self.seed),
        )  # fmt: skip

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)  # a fresh order
        self.collator.set_epoch(epoch)  # fresh masks

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return model(**batch).loss

    @torch.no_grad()
    def heldout_loss(self, model: torch.nn.Module, dataset: TokenDataset, batch_size: int) -> float:
        """Mean loss per predicted token over the held-out texts, with fixed masks (epoch -1).

        Every process computes it on all held-out texts: the number is exact and the
        same everywhere, and the held-out set is small.
        """
        was_training = model.training
        model.eval()
        collator = self.collator
        collator.set_epoch(_HELDOUT_EPOCH)
        total, count = 0.0, 0
        device = next(model.parameters()).device
        for start in range(0, len(dataset), batch_size):
            batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model(**batch).loss
            labels = batch["labels"]
            targets = int((labels[:, 1:] != -100).sum()) if self.causal else int((labels != -100).sum())
            total, count = total + float(loss) * targets, count + targets
        model.train(was_training)
        return total / max(count, 1)


@OBJECTIVES.register("mlm")
class MaskedLM(LanguageModeling):
    """BERT's masked-LM: predict the chosen tokens (80% [MASK], 10% random, 10% kept)."""

    def __init__(
        self, tokenizer: Any, train: TokenDataset, batch_size: int, seed: int, probability: float = 0.15
    ) -> None:
        super().__init__(MLMCollator(tokenizer, seed, probability), train, batch_size, seed)


@OBJECTIVES.register("clm")
class CausalLM(LanguageModeling):
    """Next-token prediction (GPT-style decoders)."""

    causal = True

    def __init__(self, tokenizer: Any, train: TokenDataset, batch_size: int, seed: int) -> None:
        super().__init__(CLMCollator(tokenizer, seed), train, batch_size, seed)


@OBJECTIVES.register("span")
class SpanCorruption(LanguageModeling):
    """T5's span corruption: spell out the spans that sentinels replaced in the input."""

    def __init__(
        self, tokenizer: Any, train: TokenDataset, batch_size: int, seed: int,
        density: float = 0.15, mean_span: float = 3.0,
    ) -> None:  # fmt: skip
        super().__init__(SpanCollator(tokenizer, seed, density, mean_span), train, batch_size, seed)


LANGUAGE_MODELING = ("mlm", "clm", "span")
