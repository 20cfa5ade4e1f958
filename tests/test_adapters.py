"""PEFT adapter strategies (lora, loha, ia3, prefix-tuning, prompt-tuning) through peft.

Tiny random models built from configs; each training run is one epoch on a
handful of examples. Adapter weights are randomised before save / load and
merge checks, because freshly initialised adapters are the identity (LoRA's B
is zero, IA3's scales are one) and would hide a weight that was not restored.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import sentiment_frame
from gensim.models import KeyedVectors
from test_elmo import write_elmo

from nlptransfer import ConfigError, FinetuneConfig, TransferModel, get_strategy, load_backbone, train
from nlptransfer.backbones import VocabOptions
from nlptransfer.backbones.peft_adapter import adapter_parameters
from nlptransfer.cli import main as cli_main
from nlptransfer.model.layers import count_parameters, format_table, trainable_rows

ADAPTERS = ("lora", "loha", "ia3", "prefix-tuning", "prompt-tuning")
TEXTS = ["good movie", "the plot was awful and the acting was boring", "a", "superb film and great acting"]
POOLING = {"bert": "cls", "ernie": "mean", "gpt2": "last", "llama": "last", "t5": "mean"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: a second thread only adds synchronisation, which dominates on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _options(strategy: str) -> dict:
    return {"strategy": strategy, "num_virtual_tokens": 4, "lora_r": 4}


def _adapted(spec: str, strategy: str, pooling: str = "mean", **options) -> TransferModel:
    """A model with the strategy's adapter, its adapter weights and head randomised."""
    torch.manual_seed(0)
    config = FinetuneConfig(model=spec, **{**_options(strategy), **options})
    model = TransferModel.from_backbone(spec, ["neg", "pos"], pooling=pooling)
    get_strategy(strategy).configure(model, config)
    with torch.no_grad():
        for _, param in adapter_parameters(model.backbone):
            param.add_(torch.randn_like(param) * 0.2)
    return model.eval()


def _logits(model: TransferModel, texts: list[str] = TEXTS) -> torch.Tensor:
    batch = model.backbone.collate(model.preprocess(texts))
    with torch.no_grad():
        return model(**batch)


@pytest.fixture(scope="module")
def runs(tiny_models: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    """Train (family, strategy) once per module through nlptransfer.train; return the run folder."""
    folder = tmp_path_factory.mktemp("adapter-runs")
    sentiment_frame(24).to_csv(folder / "train.csv", index=False)
    done: dict[tuple[str, str], tuple[Path, dict]] = {}

    def run(family: str, strategy: str) -> tuple[Path, dict]:
        if (family, strategy) not in done:
            out = folder / f"{family}-{strategy}"
            config = FinetuneConfig(
                model=tiny_models[family], train_file=str(folder / "train.csv"), epochs=1, batch_size=8,
                validation_split=0.25, pooling=POOLING[family], output_dir=str(out), num_threads=1,
                **_options(strategy),
            )  # fmt: skip
            done[family, strategy] = out, train(config)
        return done[family, strategy]

    return run


def _base_name(name: str) -> str:
    """A body parameter's name in the plain source model: without the peft wrapper's parts."""
    name = name.removeprefix("backbone.model.").removeprefix("base_model.").removeprefix("model.")
    return name.replace(".base_layer.", ".")


@pytest.mark.parametrize("strategy", ["lora", "ia3", "prefix-tuning", "prompt-tuning"])
def test_adapter_trains_through_the_recipe_on_bert(runs, tiny_bert: str, strategy: str) -> None:
    out, results = runs("bert", strategy)
    assert 0 < results["trainable_parameters"] < 0.2 * results["total_parameters"]
    assert (out / "backbone" / "adapter" / "adapter_config.json").is_file()
    assert (out / "backbone" / "adapter" / "adapter_model.safetensors").is_file()
    assert "partial" in (out / "trainable_layers.md").read_text()
    # The body's own weights are exactly the source model's: only the adapter and head trained.
    source = TransferModel.from_backbone(tiny_bert, ["neg", "pos"]).backbone.model.state_dict()
    trained = TransferModel.from_pretrained(out)
    adapter = {n for n, _ in adapter_parameters(trained.backbone)}
    body = {
        _base_name(n): p for n, p in trained.named_parameters()
        if n.startswith("backbone.") and n.removeprefix("backbone.") not in adapter
    }  # fmt: skip
    assert body.keys() == source.keys() - {n for n in source if n.startswith("pooler.")}
    assert all(torch.equal(p, source[n]) for n, p in body.items())


@pytest.mark.parametrize("family", ["gpt2", "llama", "t5"])
def test_lora_trains_decoders_and_t5(runs, family: str) -> None:
    out, results = runs(family, "lora")
    assert 0 < results["trainable_parameters"] < results["total_parameters"]
    loaded = TransferModel.from_pretrained(out)
    assert any("lora_A" in n for n, _ in loaded.named_parameters())


def test_adapter_weights_move_and_the_body_does_not(tiny_bert: str) -> None:
    for strategy in ADAPTERS:
        torch.manual_seed(0)
        config = FinetuneConfig(model=tiny_bert, **_options(strategy))
        model = TransferModel.from_backbone(tiny_bert, ["neg", "pos"])
        groups = get_strategy(strategy).configure(model, config)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        optimizer = torch.optim.AdamW(groups, lr=1e-2)
        batch = model.backbone.collate(model.preprocess(["good film", "awful plot"]))
        torch.nn.functional.cross_entropy(model(**batch), torch.tensor([1, 0])).backward()
        optimizer.step()
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        adapter = {f"backbone.{n}" for n, _ in adapter_parameters(model.backbone)}
        assert adapter and changed == adapter | {"head.linear.weight", "head.linear.bias"}, strategy


def test_lora_trainable_fraction_on_tiny_bert(tiny_bert: str) -> None:
    model = TransferModel.from_backbone(tiny_bert, ["neg", "pos"])
    get_strategy("lora").configure(model, FinetuneConfig(model=tiny_bert, strategy="lora"))
    trainable, total = count_parameters(model)
    share = 100 * trainable / total
    print(f"\nLoRA r=8 on tiny BERT trains {trainable:,} of {total:,} parameters ({share:.2f}%)")
    # query and value of 2 layers, each A (8 x 32) + B (32 x 8); plus the 32 x 2 head and its bias
    assert trainable == 2 * 2 * (8 * 32 + 32 * 8) + 32 * 2 + 2
    names = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")}
    assert names and all(".query.lora_" in n or ".value.lora_" in n for n in names)
    table = format_table(trainable_rows(model))
    assert "backbone.encoder.layer.0 |" in table and f"{trainable:,} (" in table


@pytest.mark.slow
def test_lora_trains_at_most_two_percent_of_minilm() -> None:
    model = TransferModel.from_backbone("minilm", ["neg", "pos"])
    get_strategy("lora").configure(model, FinetuneConfig(strategy="lora"))
    trainable, total = count_parameters(model)
    print(f"\nLoRA on MiniLM trains {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)")
    assert trainable / total <= 0.02


def test_configure_twice_adds_the_adapter_once(tiny_bert: str) -> None:
    model = TransferModel.from_backbone(tiny_bert, ["neg", "pos"])
    config = FinetuneConfig(model=tiny_bert, strategy="lora")
    first = get_strategy("lora").configure(model, config)
    second = get_strategy("lora").configure(model, config)
    assert sum(p.numel() for g in first for p in g["params"]) == sum(
        p.numel() for g in second for p in g["params"]
    )
    with pytest.raises(ConfigError, match="already has a LORA adapter"):
        get_strategy("ia3").configure(model, FinetuneConfig(model=tiny_bert, strategy="ia3"))


SAVE_LOAD = [("bert", s) for s in ADAPTERS] + [(f, "lora") for f in ("ernie", "gpt2", "llama", "t5")]


@pytest.mark.parametrize(("family", "strategy"), SAVE_LOAD)
def test_save_load_gives_identical_logits(tiny_models, tmp_path: Path, family: str, strategy: str) -> None:
    model = _adapted(tiny_models[family], strategy, POOLING[family])
    model.save_pretrained(tmp_path)
    loaded = TransferModel.from_pretrained(tmp_path)
    assert not loaded.training
    assert torch.equal(_logits(loaded), _logits(model))
    saved = json.loads((tmp_path / "transfer_config.json").read_text())["backbone"]["adapter"]
    assert saved["peft_type"] == get_strategy(strategy).peft_type


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_saved_adapter_loads_with_peft_itself(tiny_bert: str, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModel

    model = _adapted(tiny_bert, "lora")
    model.save_pretrained(tmp_path)
    peft_model = PeftModel.from_pretrained(
        AutoModel.from_pretrained(tiny_bert), tmp_path / "backbone" / "adapter"
    )
    batch = model.backbone.collate(model.preprocess(TEXTS))
    with torch.no_grad():
        ours = model.backbone(**batch).last_hidden_state
        theirs = peft_model.eval()(**batch).last_hidden_state
    assert torch.allclose(ours, theirs, atol=1e-6)


MERGEABLE = [
    ("bert", "lora"),
    ("bert", "ia3"),
    ("bert", "loha"),
    ("gpt2", "lora"),
    ("llama", "lora"),
    ("t5", "lora"),
]


@pytest.mark.parametrize(("family", "strategy"), MERGEABLE)
def test_merged_model_matches_and_loads_without_adapter(
    tiny_models, tmp_path: Path, family, strategy
) -> None:
    model = _adapted(tiny_models[family], strategy, POOLING[family])
    before = _logits(model)
    model.merge_adapter()
    assert torch.allclose(_logits(model), before, atol=1e-5)
    model.save_pretrained(tmp_path)
    assert "adapter" not in json.loads((tmp_path / "transfer_config.json").read_text())["backbone"]
    assert not (tmp_path / "backbone" / "adapter").exists()
    loaded = TransferModel.from_pretrained(tmp_path)
    assert not any("lora" in n or "base_layer" in n for n, _ in loaded.named_parameters())
    assert torch.allclose(_logits(loaded), before, atol=1e-5)


def test_merge_adapter_command(runs, tmp_path: Path) -> None:
    run, _ = runs("bert", "lora")
    assert cli_main(["merge-adapter", str(run), str(tmp_path / "merged")]) == 0
    merged, unmerged = TransferModel.from_pretrained(tmp_path / "merged"), TransferModel.from_pretrained(run)
    assert torch.allclose(_logits(merged), _logits(unmerged), atol=1e-5)
    assert merged.predict(TEXTS).labels == unmerged.predict(TEXTS).labels


def test_merge_adapter_command_refuses_prompt_tuning(runs, tmp_path: Path, capsys) -> None:
    run, _ = runs("bert", "prompt-tuning")
    assert cli_main(["merge-adapter", str(run), str(tmp_path / "merged")]) == 2
    assert "cannot be merged" in capsys.readouterr().err


def test_merge_refuses_prefix_tuning_and_plain_models(tiny_bert: str) -> None:
    with pytest.raises(ConfigError, match="cannot be merged"):
        _adapted(tiny_bert, "prefix-tuning").merge_adapter()
    with pytest.raises(ConfigError, match="no PEFT adapter"):
        TransferModel.from_backbone(tiny_bert, ["neg", "pos"]).merge_adapter()


PROMPT_POOLING = [
    ("bert", "cls"),
    ("bert", "mean"),
    ("bert", "max"),
    ("bert", "last"),
    ("gpt2", "last"),
    ("t5", "mean"),
]


@pytest.mark.parametrize(("family", "pooling"), PROMPT_POOLING)
def test_prompt_tuning_pools_exactly_the_real_tokens(tiny_models, family: str, pooling: str) -> None:
    model = _adapted(tiny_models[family], "prompt-tuning", pooling)
    backbone = model.backbone
    batch = backbone.collate(model.preprocess(TEXTS))
    with torch.no_grad():
        out = backbone(output_hidden_states=True, **batch)
        full = backbone.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    # The virtual tokens come first; the backbone returns only the positions of real tokens.
    assert out.last_hidden_state.shape[:2] == batch["input_ids"].shape
    assert all(h.shape[:2] == batch["input_ids"].shape for h in out.hidden_states)
    assert torch.equal(out.last_hidden_state, full.last_hidden_state[:, 4:])
    # Padding (a longer neighbour in the batch) changes no example's features.
    with torch.no_grad():
        alone = torch.cat([model.encode(**backbone.collate(model.preprocess([t]))) for t in TEXTS])
        together = model.encode(**batch)
        plain = backbone.model.get_base_model()(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        )
    assert torch.allclose(alone, together, atol=1e-5)
    # The real tokens attend to the prompt: their states differ from the plain model's.
    assert not torch.allclose(out.last_hidden_state, plain.last_hidden_state, atol=1e-3)


def test_prompt_tuning_leaves_room_for_the_virtual_tokens(tiny_bert: str) -> None:
    model = _adapted(tiny_bert, "prompt-tuning")
    assert model.max_length == 64 - 4  # tiny BERT has 64 positions
    long_text = " ".join(["good"] * 200)
    assert _logits(model, [long_text]).shape == (1, 2)


def test_prefix_tuning_on_t5_is_a_clear_error(tiny_models) -> None:
    with pytest.raises(ConfigError, match="prefix-tuning does not work with t5 models"):
        _adapted(tiny_models["t5"], "prefix-tuning")


def test_unknown_target_modules_name_the_layers_that_exist(tiny_bert: str) -> None:
    with pytest.raises(ConfigError, match=r"nope.*query.*--target_modules"):
        _adapted(tiny_bert, "lora", target_modules=["nope"])


def test_target_modules_override_and_all_linear(tiny_bert: str) -> None:
    model = _adapted(tiny_bert, "lora", target_modules=["key"])
    names = {n for n, _ in adapter_parameters(model.backbone)}
    assert names and all(".key.lora_" in n for n in names)
    model = _adapted(tiny_bert, "lora", target_modules=["all-linear"])
    layers = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, _ in adapter_parameters(model.backbone)}
    assert layers == {"query", "key", "value", "dense"}


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_unfreeze_layers_puts_the_adapter_in_the_top_layers_only(tiny_bert: str, method: str) -> None:
    model = _adapted(tiny_bert, method, unfreeze_layers=1)
    trained = {n for n, p in adapter_parameters(model.backbone) if p.requires_grad}
    assert trained and all(".layer.1." in n for n in trained)  # tiny BERT: blocks 0 and 1
    assert model.backbone.frozen_bottom() == 1


def test_unfreeze_layers_with_an_adapter_is_checked(tiny_bert: str) -> None:
    with pytest.raises(ConfigError, match="--unfreeze_layers applies to finetune, contrastive, lora"):
        _adapted(tiny_bert, "prompt-tuning", unfreeze_layers=1)
    with pytest.raises(ConfigError, match="lora needs at least one of the 2 layers"):
        _adapted(tiny_bert, "lora", unfreeze_layers=0)
    with pytest.raises(ConfigError, match="cannot combine with --target_modules all-linear"):
        _adapted(tiny_bert, "lora", unfreeze_layers=1, target_modules=["all-linear"])


@pytest.fixture(scope="module")
def word_vectors(tmp_path_factory: pytest.TempPathFactory) -> str:
    words = sorted({w for t in sentiment_frame(200)["text"] for w in t.split()})
    kv = KeyedVectors(vector_size=8)
    kv.add_vectors(words, np.random.default_rng(0).normal(size=(len(words), 8)).astype(np.float32))
    path = tmp_path_factory.mktemp("adapter-w2v") / "vectors.txt"
    kv.save_word2vec_format(str(path))
    return f"word2vec:{path}"


@pytest.fixture(scope="module")
def elmo(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("adapter-elmo")
    write_elmo(folder)
    return f"elmo:{folder}"


def _non_hf(spec: str, strategy: str, encoder: str = "none") -> TransferModel:
    torch.manual_seed(0)
    backbone = load_backbone(spec, vocabulary_texts=sentiment_frame(40)["text"].tolist(),
                             word_options=VocabOptions(encoder=encoder))  # fmt: skip
    model = TransferModel.from_backbone(backbone, ["neg", "pos"])
    get_strategy(strategy).configure(model, FinetuneConfig(model=spec, strategy=strategy))
    with torch.no_grad():
        for _, param in adapter_parameters(model.backbone):
            param.add_(torch.randn_like(param) * 0.2)
    return model.eval()


NON_HF = [("word_vectors", "lora", "none"), ("word_vectors", "lora", "bilstm"), ("elmo", "lora", "none"),
          ("elmo", "ia3", "none")]  # fmt: skip


@pytest.mark.parametrize(("source", "strategy", "encoder"), NON_HF)
def test_lora_and_ia3_on_word_vectors_and_elmo(request, tmp_path: Path, source, strategy, encoder) -> None:
    spec = request.getfixturevalue(source)
    model = _non_hf(spec, strategy, encoder)
    adapter = adapter_parameters(model.backbone)
    assert adapter and all(p.requires_grad for _, p in adapter)
    if encoder == "bilstm":  # a random encoder on top of the vectors must train in full
        assert all(p.requires_grad for p in model.backbone.encoder.parameters())
    before = _logits(model)
    model.save_pretrained(tmp_path / "adapted")
    assert torch.equal(_logits(TransferModel.from_pretrained(tmp_path / "adapted")), before)
    model.merge_adapter()
    assert torch.allclose(_logits(model), before, atol=1e-5)
    model.save_pretrained(tmp_path / "merged")
    assert torch.allclose(_logits(TransferModel.from_pretrained(tmp_path / "merged")), before, atol=1e-5)


UNSUPPORTED = [("ia3", "Use --strategy lora"), ("prompt-tuning", "Hugging Face transformer"),
               ("prefix-tuning", "Hugging Face transformer")]  # fmt: skip


@pytest.mark.parametrize(("strategy", "message"), UNSUPPORTED)
def test_unsupported_adapters_on_word_vectors_are_clear_errors(word_vectors: str, strategy, message) -> None:
    with pytest.raises(ConfigError, match=message):
        _non_hf(word_vectors, strategy)
