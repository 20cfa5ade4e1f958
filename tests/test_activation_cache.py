"""The activation cache: partial fine-tuning on stored states of the frozen bottom, same results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import sentiment_split
from safetensors.torch import load_file

from nlptransfer import ConfigError, FinetuneConfig, TransferModel, load_backbone, train
from nlptransfer.data.loaders import BLOCK_INPUT, REPLAY_BLOCK, Collator, place_states
from nlptransfer.strategies.base import unfreeze_top

# Losses and weights of a run on stored states against one through the whole body: the states are
# computed in other batches (other padding), so equal up to float rounding.
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sentiment_split(tmp_path_factory.mktemp("activation-data"))


def _train(model: str, data: Path, out: Path, cache: Path, **options: Any) -> dict[str, Any]:
    options = {"strategy": "finetune", "unfreeze_layers": 1, "epochs": 2, **options}
    config = FinetuneConfig(
        model=model, train_file=str(data / "train.csv"), test_file=str(data / "test.csv"),
        output_dir=str(out), cache_dir=str(cache), batch_size=8, learning_rate=5e-3, **options,
    )  # fmt: skip
    return train(config)


def _same_run(left: dict[str, Any], right: dict[str, Any], left_dir: Path, right_dir: Path) -> None:
    assert left["test"] == pytest.approx(right["test"], abs=TOLERANCE)
    assert left["best_epoch"] == right["best_epoch"]
    losses = [[h["train_loss"] for h in r["history"]] for r in (left, right)]
    assert losses[0] == pytest.approx(losses[1], abs=TOLERANCE)
    a, b = (load_file(str(d / "model.safetensors")) for d in (left_dir, right_dir))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=TOLERANCE, rtol=0, msg=name)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_stored_states_train_to_the_results_of_the_whole_body(
    family: str, tiny_models: dict[str, str], data: Path, tmp_path: Path
) -> None:
    model, cache = tiny_models[family], tmp_path / "cache"
    cached = _train(model, data, tmp_path / "cached", cache)
    whole = _train(model, data, tmp_path / "whole", cache, activation_cache=False)
    again = _train(model, data, tmp_path / "again", cache)
    (first,), (off,), (second,) = (r["activation_cache"]["phases"] for r in (cached, whole, again))
    assert first["used"] and first["block"] == 1 and not any(first["hits"].values())
    assert not off["used"] and "--no-activation_cache" in off["reason"]
    assert second["used"] and all(second["hits"].values())  # every split read back from disk
    _same_run(cached, whole, tmp_path / "cached", tmp_path / "whole")
    _same_run(again, whole, tmp_path / "again", tmp_path / "whole")


def test_gradual_unfreezing_serves_its_partial_phases_from_stored_states(
    tiny_bert: str, data: Path, tmp_path: Path
) -> None:
    options = {"strategy": "gradual-unfreezing", "unfreeze_layers": None, "epochs": 3}
    cached = _train(tiny_bert, data, tmp_path / "cached", tmp_path / "cache", **options)
    whole = _train(tiny_bert, data, tmp_path / "whole", tmp_path / "cache", activation_cache=False, **options)
    used = [phase["used"] for phase in cached["activation_cache"]["phases"]]
    assert used == [True, False]  # the top block on stored states; then every block trains
    _same_run(cached, whole, tmp_path / "cached", tmp_path / "whole")


@pytest.mark.parametrize("pairs", ["in-batch", "oversampling"])
def test_contrastive_pairs_train_the_top_on_stored_states(
    pairs: str, tiny_bert: str, data: Path, tmp_path: Path
) -> None:
    options = {"strategy": "contrastive", "pair_sampling": pairs, "max_pairs": 200}
    cached = _train(tiny_bert, data, tmp_path / "cached", tmp_path / "cache", **options)
    whole = _train(tiny_bert, data, tmp_path / "whole", tmp_path / "cache", activation_cache=False, **options)
    (pair_phase,) = cached["activation_cache"]["phases"]  # the head phase reads features, not states
    # The pair phase is not scored: only its training split is stored.
    assert pair_phase["used"] and pair_phase["block"] == 1 and list(pair_phase["entries"]) == ["train"]
    assert cached["phases"][0]["trained_groups"] == ["encoder.layer.1"]
    _same_run(cached, whole, tmp_path / "cached", tmp_path / "whole")


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_an_adapter_on_the_top_layers_trains_on_stored_states(
    method: str, tiny_bert: str, data: Path, tmp_path: Path
) -> None:
    options = {"strategy": method, "unfreeze_layers": 1}
    cached = _train(tiny_bert, data, tmp_path / "cached", tmp_path / "cache", **options)
    whole = _train(tiny_bert, data, tmp_path / "whole", tmp_path / "cache", activation_cache=False, **options)
    (phase,) = cached["activation_cache"]["phases"]
    assert phase["used"] and phase["block"] == 1
    _same_run(cached, whole, tmp_path / "cached", tmp_path / "whole")
    # The adapter round-trips: the saved models predict alike.
    texts = ["good fun", "dull and bad"]
    cached_scores, whole_scores = (
        TransferModel.from_pretrained(tmp_path / run).predict(texts).probabilities
        for run in ("cached", "whole")
    )
    np.testing.assert_allclose(cached_scores, whole_scores, atol=TOLERANCE)


def test_in_batch_embeddings_by_length_are_the_whole_batch_embeddings(tiny_bert: str) -> None:
    from nlptransfer.engine.objectives.contrastive import embed_by_length

    model = TransferModel.from_backbone(tiny_bert, ["neg", "pos"]).eval()
    texts = [" ".join(["good"] * n) for n in (9, 1, 5, 12, 3, 7, 2, 10, 4, 6, 8)]
    batch = Collator(model.backbone)(
        [{**e, "labels": 0, "idx": i} for i, e in enumerate(model.preprocess(texts))]
    )
    del batch["labels"], batch["idx"]
    with torch.no_grad():
        whole = model(return_embeddings=True, **batch)
        chunked = embed_by_length(model, dict(batch), size=4)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)  # the batch's order, not the lengths'


def test_a_damaged_entry_is_computed_again(tiny_bert: str, data: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = _train(tiny_bert, data, tmp_path / "first", cache)
    entry = cache / first["activation_cache"]["phases"][0]["entries"]["train"]
    (entry / "offsets.npy").write_bytes(b"not an array")
    second = _train(tiny_bert, data, tmp_path / "second", cache)
    hits = second["activation_cache"]["phases"][0]["hits"]
    assert hits == {"train": False, "validation": True, "test": True}
    _same_run(first, second, tmp_path / "first", tmp_path / "second")
    assert np.load(entry / "offsets.npy").shape == (second["num_train_examples"] + 1,)  # rewritten


def test_past_the_size_limit_the_run_says_so_and_runs_uncached(
    tiny_bert: str, data: Path, tmp_path: Path
) -> None:
    result = _train(tiny_bert, data, tmp_path / "out", tmp_path / "cache", activation_cache_max_gb=1e-9)
    (phase,) = result["activation_cache"]["phases"]
    assert not phase["used"] and "over --activation_cache_max_gb 1e-09" in phase["reason"]
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_a_model_whose_blocks_pass_more_than_states_runs_uncached(
    tiny_models: dict[str, str], data: Path, tmp_path: Path
) -> None:
    result = _train(tiny_models["t5"], data, tmp_path / "out", tmp_path / "cache")
    (phase,) = result["activation_cache"]["phases"]
    assert not phase["used"] and "cannot start at block 1" in phase["reason"]
    assert result["test"]["accuracy"] > 0.5


def test_full_fine_tuning_has_no_frozen_bottom_to_store(tiny_bert: str, data: Path, tmp_path: Path) -> None:
    result = _train(tiny_bert, data, tmp_path / "out", tmp_path / "cache", unfreeze_layers=None)
    (phase,) = result["activation_cache"]["phases"]
    assert not phase["used"] and "no frozen bottom" in phase["reason"]


def test_the_frozen_bottom_stays_in_eval_mode_while_the_top_trains(tiny_bert: str) -> None:
    model = TransferModel.from_backbone(load_backbone(tiny_bert), ["neg", "pos"])
    blocks = model.backbone.model.encoder.layer
    unfreeze_top(model, 1)
    model.train()
    assert not model.backbone.model.embeddings.training and not blocks[0].training
    assert blocks[1].training and model.head.training
    unfreeze_top(model, None)  # everything trains: nothing stays in eval mode
    model.train()
    assert all(module.training for module in model.modules())


def test_states_are_placed_where_the_tokens_are_on_either_padding_side() -> None:
    rows = [np.full((2, 3), 1.0, dtype=np.float32), np.full((3, 3), 2.0, dtype=np.float32)]
    right = place_states(rows, torch.tensor([[1, 1, 0], [1, 1, 1]]))
    left = place_states(rows, torch.tensor([[0, 1, 1], [1, 1, 1]]))
    assert right[0, :, 0].tolist() == [1.0, 1.0, 0.0] and left[0, :, 0].tolist() == [0.0, 1.0, 1.0]
    assert right[1].eq(2.0).all() and left[1].eq(2.0).all()


def test_a_batch_of_stored_states_replays_to_the_whole_body_features(tiny_bert: str) -> None:
    model = TransferModel.from_backbone(load_backbone(tiny_bert), ["neg", "pos"]).eval()
    examples = model.preprocess(["a fine film", "dull and far too long for its own good"])
    batch = Collator(model.backbone)([{**e, "labels": 0, "idx": i} for i, e in enumerate(examples)])
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "idx")}
    with torch.inference_mode():
        states = model.backbone.block_input(1, **inputs)
        rows = [states[i, inputs["attention_mask"][i].bool()].numpy() for i in range(len(examples))]
        stored = {BLOCK_INPUT: place_states(rows, inputs["attention_mask"]), REPLAY_BLOCK: 1}
        replayed = model.layer_features(**inputs, **stored)
        whole = model.layer_features(**inputs)
    torch.testing.assert_close(replayed, whole, atol=1e-6, rtol=0)


def test_replaying_puts_back_a_forward_set_on_a_block_before(tiny_bert: str) -> None:
    model = TransferModel.from_backbone(load_backbone(tiny_bert), ["neg", "pos"])
    block = model.backbone.model.encoder.layer[0]
    hooked = block.forward  # as accelerate's device-map hooks set one on the instance
    block.forward = hooked
    with model.backbone.replaying(1, torch.zeros(1, 2, 32)):
        assert block.forward is not hooked
    assert block.__dict__["forward"] is hooked
    del block.forward
    with model.backbone.replaying(1, torch.zeros(1, 2, 32)):
        pass
    assert "forward" not in block.__dict__


def test_an_unwritable_cache_folder_names_the_flag_that_turns_it_off(
    tiny_bert: str, data: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="--no-activation_cache"):
        _train(tiny_bert, data, tmp_path / "out", blocker / "cache")
