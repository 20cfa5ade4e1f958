"""The Backbone contract, run against every source family.

Each family subclasses :class:`BackboneContract` and gets the same tests: layer
groups, hidden states, odd inputs, padding invariance, save/load, and training a
head through the recipe's code path. Models are tiny: random HF models built
from configs, word vectors written by the test, an ELMo file in the original
layout written by the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import POSITIVE, sentiment_frame
from gensim.models import KeyedVectors
from test_elmo import write_elmo

from nlptransfer import TransferModel, load_backbone
from nlptransfer.backbones import Backbone, VocabOptions
from nlptransfer.cli import main as cli_main

ODD_TEXTS = ["", "   ", "😀🎬 crème brûlée 東京", "good " * 500, "\t\n"]
TRAIN_TEXTS = sentiment_frame(40)["text"].tolist()


class BackboneContract:
    family: str = ""
    model_class: str | None = None
    hidden_size: int = 32
    num_blocks: int = 2
    pooling: str = "mean"
    extra_flags: tuple[str, ...] = ()

    @pytest.fixture
    def spec(self, tiny_models: dict[str, str]) -> str:
        return tiny_models[self.family]

    def load(self, spec: str) -> Backbone:
        return load_backbone(spec, vocabulary_texts=TRAIN_TEXTS, word_options=self.word_options())

    def word_options(self) -> VocabOptions | None:
        return None

    def new_model(self, spec: str) -> TransferModel:
        torch.manual_seed(0)
        return TransferModel.from_backbone(self.load(spec), ["a", "b"], pooling=self.pooling, layers="all")

    def test_shape_of_the_backbone(self, spec: str) -> None:
        backbone = self.load(spec)
        if self.model_class:
            assert type(backbone.model).__name__ == self.model_class
        assert backbone.hidden_size == self.hidden_size
        assert backbone.num_blocks() == self.num_blocks

    def test_layer_groups_cover_every_parameter_once(self, spec: str) -> None:
        backbone = self.load(spec)
        groups = backbone.layer_groups()
        assert groups[0].kind == "embeddings"
        ids = [id(p) for g in groups for _, p in g.parameters]
        assert len(ids) == len(set(ids))
        assert set(ids) == {id(p) for p in backbone.parameters()}

    @pytest.mark.parametrize("text", ODD_TEXTS)
    def test_odd_inputs_give_finite_states_for_every_layer(self, spec: str, text: str) -> None:
        backbone = self.load(spec)
        encoded = backbone.tokenize([text], None, max_length=32)
        batch = backbone.collate([{k: v[0] for k, v in encoded.items()}])
        out = backbone(output_hidden_states=True, **batch)
        assert len(out.hidden_states) == self.num_blocks + 1
        assert all(torch.isfinite(h).all() for h in out.hidden_states)
        assert out.last_hidden_state.shape[-1] == self.hidden_size

    def test_padding_does_not_change_an_example_s_features(self, spec: str) -> None:
        model = self.new_model(spec).eval()
        short, long = "good movie", "the plot was awful and the acting was boring and dull"
        with torch.inference_mode():
            alone = model.encode(**model.backbone.collate(model.preprocess([short])))
            padded = model.encode(**model.backbone.collate(model.preprocess([short, long])))[:1]
        assert torch.allclose(alone, padded, atol=1e-5)

    def test_save_load_round_trip_gives_identical_logits(self, spec: str, tmp_path: Path) -> None:
        model = self.new_model(spec).eval()
        with torch.no_grad():  # a non-default mix must round-trip
            model.pooling.mix.weights.copy_(torch.arange(float(self.num_blocks + 1)))
        model.save_pretrained(tmp_path)
        loaded = TransferModel.from_pretrained(tmp_path)
        texts = ["good movie", "", "awful " * 40]
        assert np.array_equal(loaded.predict(texts).probabilities, model.predict(texts).probabilities)

    def test_trains_a_head_through_the_recipe(self, spec: str, tmp_path: Path) -> None:
        sentiment_frame(120).to_csv(tmp_path / "train.csv", index=False)
        out = tmp_path / "out"
        # Mean pooling: a random tiny decoder's last token carries too little signal to learn from.
        code = cli_main(
            ["train", "--model", spec, "--train_file", str(tmp_path / "train.csv"), "--pooling", "mean",
             "--strategy", "feature-extraction",
             "--layers", "all", "--epochs", "15", "--early_stopping_patience", "15",
             "--learning_rate", "1e-2", "--output_dir", str(out),
             *self.extra_flags]
        )  # fmt: skip
        assert code == 0
        results = json.loads((out / "results.json").read_text())
        states = self.num_blocks + 1
        assert results["trainable_parameters"] == self.hidden_size * 2 + 2 + states + 1  # head + scalar mix
        trained = TransferModel.from_pretrained(out).pooling
        assert trained.layers == list(range(states))
        assert trained.mix.gamma.item() != 1.0  # the mix itself trained (its weights move only if states > 1)
        assert states == 1 or not torch.equal(trained.mix.weights, torch.zeros(states))
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


class TestElmo(BackboneContract):
    hidden_size = 16  # forward + backward projections of 8
    # Random character-CNN features separate the toy classes more slowly.
    extra_flags = ("--epochs", "60", "--early_stopping_patience", "60", "--learning_rate", "5e-2")

    @pytest.fixture
    def spec(self, tmp_path_factory: pytest.TempPathFactory) -> str:
        folder = tmp_path_factory.mktemp("elmo-contract")
        write_elmo(folder)
        return f"elmo:{folder}"


class TestWordVectors(BackboneContract):
    hidden_size, num_blocks = 8, 0

    @pytest.fixture
    def spec(self, tmp_path_factory: pytest.TempPathFactory) -> str:
        words = sorted({w for t in sentiment_frame(200)["text"] for w in t.split()})
        rng = np.random.default_rng(0)
        vectors = rng.normal(size=(len(words), 8)).astype(np.float32)
        vectors[[words.index(w) for w in POSITIVE], 0] += 3.0  # a sentiment direction to learn
        kv = KeyedVectors(vector_size=8)
        kv.add_vectors(words, vectors)
        path = tmp_path_factory.mktemp("w2v") / "vectors.txt"
        kv.save_word2vec_format(str(path))
        return f"word2vec:{path}"
