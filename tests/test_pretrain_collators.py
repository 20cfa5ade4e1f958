"""Domain-adaptive pretraining, unit level: masked-LM, causal-LM and span-corruption batches, splits."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from conftest import FILLER, NEGATIVE, POSITIVE, _tiny_tokenizer

from nlptransfer.engine.objectives.language_model import CLMCollator, MLMCollator, SpanCollator
from nlptransfer.errors import ConfigError, ModelLoadError
from nlptransfer.runs.pretrain import PretrainConfig, default_objective, split_heldout

WORDS = POSITIVE + NEGATIVE + FILLER
SENTINELS = [f"<extra_id_{i}>" for i in range(10)]


@pytest.fixture(scope="module")
def tok() -> Any:
    return _tiny_tokenizer()


@pytest.fixture(scope="module")
def t5_tok() -> Any:
    """The tiny word-piece tokenizer with T5's sentinel tokens added (it has [SEP] but no EOS)."""
    tokenizer = _tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": SENTINELS})
    return tokenizer


def _text(n_words: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def _ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, truncation=True, max_length=1024)["input_ids"]


def _items(rows: list[list[int]], start: int = 0) -> list[dict[str, Any]]:
    return [{"input_ids": ids, "idx": start + i} for i, ids in enumerate(rows)]


def _row(batch: dict[str, torch.Tensor], i: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of row ``i`` without its padding."""
    length = int(batch["attention_mask"][i].sum())
    return batch["input_ids"][i, :length].tolist(), batch["labels"][i, :length].tolist()


# ---------------------------------------------------------------- masked LM


def test_mlm_labels_only_at_chosen_positions(tok: Any) -> None:
    rows = _ids(tok, [_text(30, 1), _text(5, 2), "good"])
    batch = MLMCollator(tok, seed=0, probability=0.15)(_items(rows))
    assert batch["input_ids"].shape == batch["labels"].shape == (3, len(rows[0]))
    special = set(tok.all_special_ids)
    for i, original in enumerate(rows):
        inputs, labels = _row(batch, i)
        assert len(inputs) == len(original)
        chosen = [j for j, label in enumerate(labels) if label != -100]
        assert chosen, "every text has at least one target"
        for j, (token, given, label) in enumerate(zip(original, inputs, labels, strict=True)):
            if j in chosen:
                assert label == token
                assert token not in special
            else:
                assert label == -100 and given == token
        # padding: [PAD] input, no attention, no target
        assert batch["input_ids"][i, len(original) :].tolist() == [tok.pad_token_id] * (
            len(rows[0]) - len(original)
        )
        assert batch["labels"][i, len(original) :].tolist() == [-100] * (len(rows[0]) - len(original))
        assert batch["attention_mask"][i].tolist() == [1] * len(original) + [0] * (
            len(rows[0]) - len(original)
        )


def test_mlm_never_chooses_special_tokens(tok: Any) -> None:
    rows = _ids(tok, [_text(10 + 3 * seed, seed) for seed in range(20)])
    batch = MLMCollator(tok, seed=3, probability=0.9)(_items(rows))
    special = torch.tensor(sorted(tok.all_special_ids))
    padded = torch.tensor([r + [tok.pad_token_id] * (batch["labels"].shape[1] - len(r)) for r in rows])
    is_special = torch.isin(padded, special)
    assert is_special.sum() > 100  # [CLS], [SEP] and [PAD] are there...
    assert (batch["labels"][is_special] == -100).all()  # ...and never targets
    assert (batch["labels"][~is_special] != -100).float().mean() > 0.8


def test_mlm_short_texts_always_get_one_target(tok: Any) -> None:
    rows = _ids(tok, ["good"] * 40)  # [CLS] good [SEP]: one candidate each
    batch = MLMCollator(tok, seed=0, probability=0.15)(_items(rows))
    assert batch["labels"].tolist() == [[-100, tok.convert_tokens_to_ids("good"), -100]] * 40


def test_mlm_masks_depend_on_seed_epoch_and_index_only(tok: Any) -> None:
    rows = _ids(tok, [_text(60, seed) for seed in range(4)])
    items = _items(rows)
    collator = MLMCollator(tok, seed=7, probability=0.15)
    collator.set_epoch(2)
    alone = collator([items[0]])
    together = collator([items[3], items[1], items[0]])
    assert _row(alone, 0) == _row(together, 2)

    other = MLMCollator(tok, seed=7, probability=0.15)
    other.set_epoch(2)
    assert _row(other(items[:2]), 1) == _row(together, 1)

    other.set_epoch(3)
    assert _row(other([items[0]]), 0)[1] != _row(alone, 0)[1]
    reseeded = MLMCollator(tok, seed=8, probability=0.15)
    reseeded.set_epoch(2)
    assert _row(reseeded([items[0]]), 0)[1] != _row(alone, 0)[1]


def test_mlm_rates(tok: Any) -> None:
    rows = _ids(tok, [_text(100, seed) for seed in range(120)])
    batch = MLMCollator(tok, seed=0, probability=0.15)(_items(rows))
    padded = torch.tensor([r + [tok.pad_token_id] * (batch["labels"].shape[1] - len(r)) for r in rows])
    candidates = ~torch.isin(padded, torch.tensor(sorted(tok.all_special_ids)))
    chosen = batch["labels"] != -100
    assert 0.13 < chosen.sum() / candidates.sum() < 0.17
    inputs = batch["input_ids"][chosen]
    masked = (inputs == tok.mask_token_id).float().mean()
    kept = (inputs == padded[chosen]).float().mean()
    assert 0.76 < masked < 0.84
    assert 0.07 < kept < 0.13  # 10% left as they are (+ random draws of the same token)
    assert 0.86 < masked + kept < 0.94  # the rest became random tokens


# ---------------------------------------------------------------- causal LM


def test_clm_labels_are_the_inputs_except_padding(tok: Any) -> None:
    pad = tok.pad_token_id
    rows = [[2, 5, pad], [2, 5, 6, 7, 3], [2, 9]]  # row 0 ends with a real token equal to the pad id
    batch = CLMCollator(tok, seed=0)(_items(rows))
    assert batch["input_ids"].tolist() == [[2, 5, pad, pad, pad], [2, 5, 6, 7, 3], [2, 9, pad, pad, pad]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5, [1, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[2, 5, pad, -100, -100], [2, 5, 6, 7, 3], [2, 9, -100, -100, -100]]


# ---------------------------------------------------------------- span corruption


def _spans(target: list[int], sentinels: set[int]) -> dict[int, list[int]]:
    spans: dict[int, list[int]] = {}
    current = None
    for token in target:
        if token in sentinels:
            current = token
            spans[current] = []
        else:
            assert current is not None, "the target starts with a sentinel"
            spans[current].append(token)
    return spans


def _reconstruct(source: list[int], target: list[int], sentinels: set[int]) -> list[int]:
    spans = _spans(target, sentinels)
    assert [t for t in source if t in sentinels] == list(spans)  # the same sentinels, in the same order
    out: list[int] = []
    for token in source:
        out += spans[token] if token in sentinels else [token]
    return out


def test_span_corruption_reconstructs_the_text(t5_tok: Any) -> None:
    sentinel_ids = t5_tok.convert_tokens_to_ids(SENTINELS)
    sentinels = set(sentinel_ids)
    eos = t5_tok.sep_token_id
    rows = _ids(t5_tok, [_text(n, n) for n in (3, 20, 80, 150)])
    batch = SpanCollator(t5_tok, seed=0, density=0.15, mean_span=3.0)(_items(rows))
    for i, original in enumerate(rows):
        length = int(batch["attention_mask"][i].sum())
        source = batch["input_ids"][i, :length].tolist()
        target = [t for t in batch["labels"][i].tolist() if t != -100]
        assert source[-1] == eos and target[-1] == eos
        assert eos not in source[:-1] and eos not in target[:-1]
        assert target[0] == sentinel_ids[0]
        used = [t for t in source if t in sentinels]
        assert used == sentinel_ids[: len(used)]
        assert [*_reconstruct(source[:-1], target[:-1], sentinels), eos] == original
        assert len(source) <= len(original)


def test_span_corruption_of_a_two_token_body(t5_tok: Any) -> None:
    ids = _ids(t5_tok, ["good"])[0]  # [CLS] good [SEP]
    batch = SpanCollator(t5_tok, seed=5, density=0.15, mean_span=3.0)(_items([ids]))
    s0 = t5_tok.convert_tokens_to_ids("<extra_id_0>")
    assert batch["input_ids"].tolist() == [[ids[0], s0, ids[2]]]
    assert batch["labels"].tolist() == [[s0, ids[1], ids[2]]]


def test_span_corruption_without_a_trailing_eos(t5_tok: Any) -> None:
    ids = _ids(t5_tok, [_text(40, 0)])[0][:-1]  # no [SEP] at the end
    sentinels = set(t5_tok.convert_tokens_to_ids(SENTINELS))
    batch = SpanCollator(t5_tok, seed=0, density=0.15, mean_span=3.0)(_items([ids]))
    source, target = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    assert source[-1] == target[-1] == t5_tok.sep_token_id
    assert _reconstruct(source[:-1], target[:-1], sentinels) == ids


@pytest.mark.parametrize("density", [0.15, 0.3])
def test_span_noise_fraction_is_near_the_density(t5_tok: Any, density: float) -> None:
    sentinels = set(t5_tok.convert_tokens_to_ids(SENTINELS))
    rows = _ids(t5_tok, [_text(150, seed) for seed in range(20)])
    batch = SpanCollator(t5_tok, seed=1, density=density, mean_span=3.0)(_items(rows))
    noise = total = 0
    for i, original in enumerate(rows):
        target = [t for t in batch["labels"][i].tolist() if t != -100][:-1]
        noise += sum(t not in sentinels for t in target)
        total += len(original) - 1
    assert abs(noise / total - density) < 0.01


def test_span_masks_depend_on_seed_epoch_and_index_only(t5_tok: Any) -> None:
    items = _items(_ids(t5_tok, [_text(80, seed) for seed in range(3)]))
    collator = SpanCollator(t5_tok, seed=2, density=0.15, mean_span=3.0)
    alone = collator([items[2]])
    together = collator([items[0], items[2], items[1]])
    assert alone["input_ids"][0].tolist() == _row(together, 1)[0]
    collator.set_epoch(1)
    assert collator([items[2]])["input_ids"][0].tolist() != alone["input_ids"][0].tolist()


def test_span_collator_needs_sentinels(tok: Any) -> None:
    with pytest.raises(ModelLoadError, match="<extra_id_0>"):
        SpanCollator(tok, seed=0, density=0.15, mean_span=3.0)


# ---------------------------------------------------------------- held-out split, options, objectives


def test_split_heldout_is_a_deterministic_partition() -> None:
    texts = [f"text {i}" for i in range(50)]
    train, heldout = split_heldout(texts, 0.1, seed=3)
    assert len(heldout) == 5 and len(train) == 45
    assert not set(train) & set(heldout)
    assert sorted(train + heldout) == sorted(texts)
    assert split_heldout(texts, 0.1, seed=3) == (train, heldout)
    assert split_heldout(texts, 0.1, seed=4)[1] != heldout
    assert len(split_heldout(texts[:3], 0.1, seed=0)[1]) == 1  # at least one held-out text


def test_split_heldout_leaves_a_training_text() -> None:
    texts = ["first text", "second text"]  # load_texts accepts 2 texts, PretrainConfig heldout_split 0.9
    PretrainConfig(heldout_split=0.9)
    for seed in range(5):  # 0.9 of 2 rounds to 2 held out: one is kept back to train on, whatever the order
        train, heldout = split_heldout(texts, 0.9, seed=seed)
        assert len(train) == len(heldout) == 1
        assert sorted(train + heldout) == texts


def test_pretrain_config_validation() -> None:
    with pytest.raises(ConfigError, match="--objective must be one of mlm, clm, span, got 'xyz'"):
        PretrainConfig(objective="xyz")
    assert PretrainConfig().objective is None
    assert PretrainConfig(objective="span").objective == "span"
    with pytest.raises(ConfigError, match="--mlm_probability"):
        PretrainConfig(mlm_probability=0.95)


def test_default_objective() -> None:
    import transformers as tf

    assert default_objective(tf.BertConfig()) == "mlm"
    assert default_objective(tf.BertConfig(is_decoder=True)) == "clm"
    assert default_objective(tf.GPT2Config()) == "clm"
    assert default_objective(tf.LlamaConfig()) == "clm"
    assert default_objective(tf.T5Config()) == "span"
