"""The HF text backbone meets the Backbone contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nlptransfer.backbones import HFTextBackbone
from nlptransfer.errors import ModelLoadError


@pytest.fixture(scope="module")
def backbone(tiny_bert: str) -> HFTextBackbone:
    return HFTextBackbone.from_pretrained(tiny_bert)


def test_layer_groups_cover_every_parameter_once_in_order(backbone: HFTextBackbone) -> None:
    groups = backbone.layer_groups()
    assert [g.name for g in groups] == ["embeddings", "encoder.layer.0", "encoder.layer.1"]
    assert [g.kind for g in groups] == ["embeddings", "block", "block"]
    grouped = [id(p) for g in groups for _, p in g.parameters]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in backbone.parameters()}


def test_unused_pooler_is_dropped(backbone: HFTextBackbone) -> None:
    assert getattr(backbone.model, "pooler", None) is None
    assert not any("pooler" in name for name, _ in backbone.named_parameters())


def test_tokenize_truncates_and_collate_pads(backbone: HFTextBackbone) -> None:
    encoded = backbone.tokenize(["good movie", "the plot was " * 40], None, max_length=16)
    assert len(encoded["input_ids"][1]) == 16
    features = [dict(zip(encoded, values, strict=True)) for values in zip(*encoded.values(), strict=True)]
    batch = backbone.collate(features)
    assert batch["input_ids"].shape == (2, 16)
    short = len(encoded["input_ids"][0])
    assert batch["attention_mask"][0].tolist() == [1] * short + [0] * (16 - short)
    assert (batch["input_ids"][0, short:] == backbone.tokenizer.pad_token_id).all()


def test_gpu_batches_are_padded_to_a_multiple_of_8(backbone: HFTextBackbone) -> None:
    """On a GPU every batch width is a multiple of 8: cuDNN attention plans each new shape once."""
    from nlptransfer.model.transfer import TransferModel, align_padding

    model = TransferModel.from_backbone(backbone, ["a", "b"]).eval()
    encoded = backbone.tokenize(["good movie", "the plot was fine"], None, max_length=64)
    features = [dict(zip(encoded, values, strict=True)) for values in zip(*encoded.values(), strict=True)]
    longest = max(len(ids) for ids in encoded["input_ids"])
    align_padding(model, torch.device("cuda"))  # a device object only: no GPU needed
    padded = backbone.collate(features)
    assert padded["input_ids"].shape[1] == -(-longest // 8) * 8 > longest
    assert padded["attention_mask"].sum() == sum(len(ids) for ids in encoded["input_ids"])
    align_padding(model, torch.device("cpu"))
    assert backbone.collate(features)["input_ids"].shape[1] == longest
    out = backbone(**padded).last_hidden_state[:, :longest]
    assert torch.allclose(out, backbone(**backbone.collate(features)).last_hidden_state, atol=1e-5)


@pytest.mark.parametrize("text", ["", "   ", "😀🎬 crème brûlée", "good " * 500])
def test_odd_inputs_give_finite_states(backbone: HFTextBackbone, text: str) -> None:
    encoded = backbone.tokenize([text], None, max_length=32)
    batch = backbone.collate([{k: v[0] for k, v in encoded.items()}])
    out = backbone(output_hidden_states=True, **batch)
    assert out.last_hidden_state.shape[-1] == backbone.hidden_size
    assert len(out.hidden_states) == backbone.num_blocks() + 1
    assert torch.isfinite(out.last_hidden_state).all()


def test_text_pairs_are_encoded_together(backbone: HFTextBackbone) -> None:
    single = backbone.tokenize(["good"], None, max_length=32)["input_ids"][0]
    paired = backbone.tokenize(["good"], ["bad"], max_length=32)["input_ids"][0]
    assert len(paired) > len(single)


def test_missing_local_folder_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        HFTextBackbone.from_pretrained(str(tmp_path / "no-such-model"))


def test_unknown_hub_id_offline_is_a_clear_error() -> None:
    with pytest.raises(ModelLoadError, match="not a short name"):
        HFTextBackbone.from_pretrained("minilmm")


def test_decoder_tokenizer_without_pad_and_empty_texts(tmp_path) -> None:
    """GPT-style tokenizers: no pad token, and "" encodes to no tokens at all."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2Model, PreTrainedTokenizerFast

    from nlptransfer import TransferModel

    vocab = {"<eos>": 0, "<unk>": 1, "good": 2, "film": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")
    assert fast.pad_token is None and fast("")["input_ids"] == []
    fast.save_pretrained(tmp_path)
    GPT2Model(GPT2Config(vocab_size=4, n_embd=8, n_layer=1, n_head=2, n_positions=16)).save_pretrained(
        tmp_path
    )
    model = TransferModel.from_backbone(str(tmp_path), ["a", "b"], pooling="last")
    assert model.backbone.tokenizer.pad_token == "<eos>"
    predictions = model.predict(["", "good film", ""])
    assert predictions.probabilities.shape == (3, 2)
    assert np.isfinite(predictions.probabilities).all()
