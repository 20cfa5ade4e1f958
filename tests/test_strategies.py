"""Strategies freeze and train exactly what they promise."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from conftest import sentiment_frame

from nlptransfer import ConfigError, FinetuneConfig, TransferModel, get_strategy
from nlptransfer.data import LabelledData, Split
from nlptransfer.engine.context import RunContext
from nlptransfer.engine.fit import fit
from nlptransfer.model.layers import format_table, trainable_rows
from nlptransfer.tasks.metrics import MetricSet


def _data(n: int = 64) -> LabelledData:
    frame = sentiment_frame(n)
    labels = [int(v == "pos") for v in frame["label"]]
    split = Split(frame["text"].tolist(), labels)
    return LabelledData(["neg", "pos"], train=split, validation=split)


def _train(tiny_bert: str, **options) -> tuple[TransferModel, dict[str, torch.Tensor]]:
    config = FinetuneConfig(model=tiny_bert, epochs=1, batch_size=16, learning_rate=1e-2, **options)
    strategy = get_strategy(config.strategy)
    torch.manual_seed(0)
    model = TransferModel.from_backbone(tiny_bert, ["neg", "pos"], layers=strategy.layers(config, 2))
    phases = strategy.phases(model, config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ctx = RunContext(config, strategy, Accelerator(cpu=True), MetricSet(config.metrics))
    fit(model, _data(), phases, ctx)
    return model, before


def _changed(model: TransferModel, before: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


def test_feature_extraction_changes_no_body_weight(tiny_bert: str) -> None:
    model, before = _train(tiny_bert, strategy="feature-extraction")
    changed = _changed(model, before)
    assert changed == {"head.linear.weight", "head.linear.bias"}
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_feature_extraction_keeps_body_frozen_on_the_token_path(tiny_bert: str) -> None:
    """Even when the body runs in the graph, a feature-extraction step leaves it unchanged."""
    model = TransferModel.from_backbone(tiny_bert, ["neg", "pos"])
    groups = get_strategy("feature-extraction").configure(model, FinetuneConfig(model=tiny_bert))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(groups, lr=0.1)
    batch = model.backbone.collate(model.preprocess(["good film", "awful plot"]))
    torch.nn.functional.cross_entropy(model(**batch), torch.tensor([1, 0])).backward()
    optimizer.step()
    assert _changed(model, before) == {"head.linear.weight", "head.linear.bias"}
    assert all(p.grad is None for p in model.backbone.parameters())


def test_head_only_finetune_uses_the_cached_features_path(tiny_bert: str) -> None:
    config = FinetuneConfig(model=tiny_bert, strategy="finetune", unfreeze_layers=0)
    assert get_strategy("finetune").freezes_body(config)
    assert not get_strategy("finetune").freezes_body(FinetuneConfig(model=tiny_bert, strategy="finetune"))


def test_blocks_above_the_pooled_layer_stay_frozen(tiny_bert: str) -> None:
    model = TransferModel.from_backbone(tiny_bert, ["neg", "pos"], layers=[1])
    get_strategy("finetune").configure(model, FinetuneConfig(model=tiny_bert, strategy="finetune"))
    rows = {r.name: r.trainable for r in trainable_rows(model)}
    assert rows["backbone.encoder.layer.0"] == "yes"
    assert rows["backbone.encoder.layer.1"] == "no"  # its output is never used


def test_top_k_unfreezing_trains_exactly_those_layers_and_the_head(tiny_bert: str) -> None:
    model, before = _train(tiny_bert, strategy="finetune", unfreeze_layers=1)
    changed_modules = {n.rsplit(".", 2)[0] if n.startswith("head") else n for n in _changed(model, before)}
    assert any(n.startswith("backbone.model.encoder.layer.1.") for n in changed_modules)
    assert not any(n.startswith("backbone.model.encoder.layer.0.") for n in changed_modules)
    assert not any(n.startswith("backbone.model.embeddings.") for n in changed_modules)
    assert {"head.linear.weight", "head.linear.bias"} <= _changed(model, before)
    rows = {r.name: r.trainable for r in trainable_rows(model)}
    assert rows == {
        "backbone.embeddings": "no",
        "backbone.encoder.layer.0": "no",
        "backbone.encoder.layer.1": "yes",
        "head": "yes",
    }


def test_full_finetune_uses_reduced_body_learning_rate(tiny_bert: str) -> None:
    model = TransferModel.from_backbone(tiny_bert, ["neg", "pos"])
    config = FinetuneConfig(model=tiny_bert, strategy="finetune", learning_rate=1e-3, body_lr_scale=0.1)
    groups = get_strategy("finetune").configure(model, config)
    head_ids = {id(p) for p in model.head.parameters()}
    for group in groups:
        is_head = all(id(p) in head_ids for p in group["params"])
        assert group["lr"] == pytest.approx(1e-3 if is_head else 1e-4)
    grouped = sum(p.numel() for g in groups for p in g["params"])
    assert grouped == sum(p.numel() for p in model.parameters())
    no_decay = [p for g in groups if g["weight_decay"] == 0.0 for p in g["params"]]
    assert no_decay and all(p.ndim == 1 for p in no_decay)


def test_unfreeze_more_layers_than_exist_is_a_clear_error(tiny_bert: str) -> None:
    model = TransferModel.from_backbone(tiny_bert, ["neg", "pos"])
    config = FinetuneConfig(model=tiny_bert, strategy="finetune", unfreeze_layers=5)
    with pytest.raises(ConfigError, match="exceeds the 2 layers"):
        get_strategy("finetune").configure(model, config)


def test_unfreeze_layers_with_feature_extraction_is_refused(tiny_bert: str) -> None:
    model = TransferModel.from_backbone(tiny_bert, ["neg", "pos"])
    config = FinetuneConfig(model=tiny_bert, unfreeze_layers=1)
    with pytest.raises(ConfigError, match="--strategy finetune"):
        get_strategy("feature-extraction").configure(model, config)


def test_trainable_table_has_totals(tiny_bert: str) -> None:
    model = TransferModel.from_backbone(tiny_bert, ["neg", "pos"])
    get_strategy("feature-extraction").configure(model, FinetuneConfig(model=tiny_bert))
    table = format_table(trainable_rows(model))
    head_params = sum(p.numel() for p in model.head.parameters())
    assert table.splitlines()[-1].startswith("| total")
    assert f"{head_params:,} (" in table.splitlines()[-1]


def test_unfreezing_layers_that_the_pooling_never_reads_is_refused(tiny_bert: str) -> None:
    model = TransferModel.from_backbone(tiny_bert, ["neg", "pos"], layers=[1])
    config = FinetuneConfig(model=tiny_bert, strategy="finetune", unfreeze_layers=1)
    with pytest.raises(ConfigError, match="read nothing above block 0"):
        get_strategy("finetune").configure(model, config)
