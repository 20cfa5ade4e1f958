"""The Backbone contract, run against every source family (tiny random models from configs).

Each family subclasses :class:`BackboneContract` and gets the same tests: layer
groups, hidden states, odd inputs, padding invariance, save/load, and training a
head through the recipe's code path.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import sentiment_frame

from nlptransfer import TransferModel
from nlptransfer.backbones import HFTextBackbone
from nlptransfer.cli import main as cli_main

ODD_TEXTS = ["", "   ", "😀🎬 crème brûlée 東京", "good " * 500, "\t\n"]


class BackboneContract:
    family: str = ""
    pooling: str = "mean"
    model_class: str = ""

    @pytest.fixture
    def path(self, tiny_models: dict[str, str]) -> str:
        return tiny_models[self.family]

    @pytest.fixture
    def backbone(self, path: str) -> HFTextBackbone:
        return HFTextBackbone.from_pretrained(path)

    def test_loads_the_expected_feature_stack(self, backbone: HFTextBackbone) -> None:
        assert type(backbone.model).__name__ == self.model_class
        assert backbone.hidden_size == 32

    def test_layer_groups_cover_every_parameter_once(self, backbone: HFTextBackbone) -> None:
        groups = backbone.layer_groups()
        assert groups[0].kind == "embeddings"
        assert [g.kind for g in groups].count("block") == 2
        ids = [id(p) for g in groups for _, p in g.parameters]
        assert len(ids) == len(set(ids))
        assert set(ids) == {id(p) for p in backbone.parameters()}

    @pytest.mark.parametrize("text", ODD_TEXTS)
    def test_odd_inputs_give_finite_states_for_every_layer(self, backbone: HFTextBackbone, text: str) -> None:
        encoded = backbone.tokenize([text], None, max_length=32)
        batch = backbone.collate([{k: v[0] for k, v in encoded.items()}])
        out = backbone(output_hidden_states=True, **batch)
        assert len(out.hidden_states) == backbone.num_blocks() + 1
        assert all(h.shape[-1] == 32 and torch.isfinite(h).all() for h in out.hidden_states)

    def test_padding_does_not_change_an_example_s_features(self, path: str) -> None:
        torch.manual_seed(0)
        model = TransferModel.from_backbone(path, ["a", "b"], pooling=self.pooling, layers="all").eval()
        short, long = "good movie", "the plot was awful and the acting was boring and dull"
        with torch.inference_mode():
            alone = model.encode(**model.backbone.collate(model.preprocess([short])))
            padded = model.encode(**model.backbone.collate(model.preprocess([short, long])))[:1]
        assert torch.allclose(alone, padded, atol=1e-5)

    def test_save_load_round_trip_gives_identical_logits(self, path: str, tmp_path: Path) -> None:
        model = TransferModel.from_backbone(path, ["a", "b"], pooling=self.pooling, layers="all").eval()
        with torch.no_grad():
            model.pooling.mix.weights.copy_(torch.arange(3.0))  # a non-default mix must round-trip
        model.save_pretrained(tmp_path)
        loaded = TransferModel.from_pretrained(tmp_path)
        texts = ["good movie", "", "awful " * 40]
        assert (loaded.predict(texts).probabilities == model.predict(texts).probabilities).all()

    def test_trains_a_head_through_the_recipe(self, path: str, tmp_path: Path) -> None:
        # Mean pooling: a random tiny decoder's last token carries too little signal to learn from.
        sentiment_frame(120).to_csv(tmp_path / "train.csv", index=False)
        out = tmp_path / "out"
        code = cli_main(
            ["train", "--model", path, "--train_file", str(tmp_path / "train.csv"), "--pooling", "mean",
             "--layers", "all", "--epochs", "15", "--learning_rate", "1e-2", "--output_dir", str(out)]
        )  # fmt: skip
        assert code == 0
        results = json.loads((out / "results.json").read_text())
        assert results["trainable_parameters"] == 32 * 2 + 2 + 3 + 1  # head + scalar mix of 3 layers
        assert TransferModel.from_pretrained(out).pooling.layers == [0, 1, 2]
        assert results["validation"]["accuracy"] >= 0.75  # chance is 0.5


class TestBert(BackboneContract):
    family, model_class = "bert", "BertModel"


class TestErnie(BackboneContract):
    family, model_class = "ernie", "ErnieModel"


class TestGPT2(BackboneContract):
    family, pooling, model_class = "gpt2", "last", "GPT2Model"


class TestLlama(BackboneContract):
    family, pooling, model_class = "llama", "last", "LlamaModel"


class TestT5Encoder(BackboneContract):
    family, model_class = "t5", "T5Stack"
