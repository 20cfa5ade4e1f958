"""Image backbones behind the same Backbone contract, image data, BatchNorm, augmentation."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import VISION_FAMILIES, bar_images, build_tiny_vision_model
from PIL import Image

from nlptransfer import FinetuneConfig, TransferModel, load_backbone
from nlptransfer.backbones import HFVisionBackbone, ImageOptions
from nlptransfer.data import load_data
from nlptransfer.errors import ConfigError, DataError, DataFileNotFoundError, ModelLoadError
from nlptransfer.registry import UnknownNameError
from nlptransfer.runs.finetune import train
from nlptransfer.strategies import get_strategy


def quiet_config(**options) -> FinetuneConfig:
    defaults = {
        "report_to": ["none"],
        "save_steps": 0,
        "save_every_epoch": False,
        "epochs": 2,
        "batch_size": 8,
    }
    return FinetuneConfig(**{**defaults, **options})


@pytest.fixture(scope="module")
def bars_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image folder (one sub-folder per class) of PNGs in mixed modes and sizes."""
    root = tmp_path_factory.mktemp("bars")
    images, labels = bar_images(48)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        (root / label).mkdir(exist_ok=True)
        picture = Image.fromarray(image)
        if i % 3 == 0:  # colour and larger images are converted and resized like the rest
            picture = picture.convert("RGB").resize((30, 30))
        picture.save(root / label / f"{i}.png")
    return root


@pytest.mark.parametrize("family", VISION_FAMILIES)
def test_every_family_meets_the_backbone_contract(tiny_vision: dict[str, str], family: str) -> None:
    backbone = load_backbone(tiny_vision[family])
    assert isinstance(backbone, HFVisionBackbone) and backbone.modality == "image"
    images, _ = bar_images(3)
    encoded = backbone.tokenize(images, None, max_length=0)
    pixels = encoded["pixel_values"]
    assert all(p.dtype == np.uint8 and p.shape == (3, 32, 32) for p in pixels)
    batch = backbone.collate([{"pixel_values": p} for p in pixels])
    out = backbone(output_hidden_states=True, **batch)
    assert out.last_hidden_state.shape[0] == 3 and out.last_hidden_state.shape[-1] == backbone.hidden_size
    assert out.attention_mask.shape == out.last_hidden_state.shape[:2]
    assert len(out.hidden_states) == backbone.num_hidden_states()
    # Every parameter in exactly one layer group, blocks between embeddings and final.
    grouped = [id(p) for g in backbone.layer_groups() for _, p in g.parameters]
    assert sorted(grouped) == sorted(id(p) for p in backbone.parameters())
    assert backbone.num_blocks() >= 2
    loss = out.last_hidden_state.sum()
    loss.backward()  # modules that feed nothing were dropped: every parameter gets a gradient
    assert all(p.grad is not None for p in backbone.parameters())


def test_vit_pooler_is_dropped_and_cls_pooling_works(tiny_vision: dict[str, str]) -> None:
    backbone = load_backbone(tiny_vision["vit"])
    assert isinstance(backbone.model.pooler, torch.nn.Identity)
    model = TransferModel.from_backbone(backbone, ["a", "b"], pooling="cls")
    assert model.predict(np.zeros((2, 20, 20), dtype=np.uint8)).probabilities.shape == (2, 2)


def test_a_folder_without_image_processor_gets_config_size(tiny_vision: dict[str, str]) -> None:
    backbone = load_backbone(tiny_vision["vit"])
    assert backbone.input_size == (32, 32)
    assert backbone.pixel_spec.mean == pytest.approx((0.485, 0.456, 0.406))


def test_from_scratch_keeps_the_architecture_not_the_weights(tiny_vision: dict[str, str]) -> None:
    torch.manual_seed(1)
    scratch = load_backbone(tiny_vision["resnet"], from_scratch=True)
    pretrained = load_backbone(tiny_vision["resnet"])
    weights = dict(pretrained.named_parameters())
    assert [n for n, _ in scratch.named_parameters()] == list(weights)
    assert any(not torch.equal(p, weights[n]) for n, p in scratch.named_parameters())


def test_missing_weights_suggest_from_scratch(tmp_path: Path) -> None:
    from transformers import ResNetConfig

    ResNetConfig(hidden_sizes=[8], depths=[1], embedding_size=8).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="--from_scratch"):
        load_backbone(str(tmp_path))
    assert load_backbone(str(tmp_path), from_scratch=True).modality == "image"


def _bn_buffers(model: TransferModel) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.backbone.named_buffers() if "running_mean" in n}


@pytest.mark.parametrize("mode", ["frozen-eval", "eval", "train"])
def test_batchnorm_of_frozen_layers_keeps_its_statistics(tiny_vision: dict[str, str], mode: str) -> None:
    backbone = load_backbone(tiny_vision["resnet"], image_options=ImageOptions(batchnorm=mode))
    model = TransferModel.from_backbone(backbone, ["a", "b"])
    config = quiet_config(strategy="finetune", unfreeze_layers=1, batchnorm=mode)
    get_strategy("finetune").configure(model, config)  # trains only the top stage and the head
    before = _bn_buffers(model)
    model.train()
    images, _ = bar_images(8)
    batch = backbone.collate(model.preprocess(images))
    model(**batch).sum().backward()
    after = _bn_buffers(model)
    top = f"{backbone.block_groups()[-1].name}."
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    frozen = {n for n in before if top not in n}
    trained = set(before) - frozen
    assert frozen and trained
    if mode == "frozen-eval":
        assert changed == trained
    elif mode == "eval":
        assert changed == set()
    else:
        assert changed == set(before)


def test_top_stage_finetune_keeps_frozen_stages_batchnorm_statistics(
    tiny_vision: dict[str, str], bars_folder: Path, tmp_path: Path
) -> None:
    source = load_backbone(tiny_vision["resnet"])
    train(quiet_config(model=tiny_vision["resnet"], train_file=str(bars_folder), strategy="finetune",
                       unfreeze_layers=1, output_dir=str(tmp_path / "run")))  # fmt: skip
    trained = TransferModel.from_pretrained(tmp_path / "run").backbone
    top = trained.block_groups()[-1].name
    source_stats = dict(source.named_buffers())
    for name, value in trained.named_buffers():
        if "running_mean" in name and top not in name:
            assert torch.equal(value, source_stats[name]), name
    assert any(
        not torch.equal(v, source_stats[n])
        for n, v in trained.named_buffers()
        if "running_mean" in n and top in n
    )


def test_augmentation_runs_only_in_training_mode(tiny_vision: dict[str, str]) -> None:
    options = ImageOptions(augment=["hflip", "affine", "color"])
    backbone = load_backbone(tiny_vision["resnet"], image_options=options)
    images, _ = bar_images(6)
    encoded = backbone.tokenize(images, None, 0)["pixel_values"]
    pixels = backbone.collate([{"pixel_values": p} for p in encoded])["pixel_values"]
    backbone.eval()
    plain = backbone.normalise(pixels)
    assert torch.equal(plain, backbone.normalise(pixels))
    backbone.train()
    torch.manual_seed(0)
    augmented = backbone.normalise(pixels)
    assert augmented.shape == plain.shape and torch.isfinite(augmented).all()
    assert not torch.equal(augmented, plain)


def test_unknown_augmentation_and_batchnorm_mode_list_the_valid_ones() -> None:
    with pytest.raises(UnknownNameError, match="affine"):
        ImageOptions(augment=["rotate"])
    with pytest.raises(ConfigError, match="frozen-eval"):
        ImageOptions(batchnorm="frozen")


def test_image_folder_is_read_with_labels_from_subfolders(bars_folder: Path) -> None:
    data = load_data(FinetuneConfig(train_file=str(bars_folder), validation_split=0.25))
    assert data.modality == "image" and data.label_names == ["horizontal", "vertical"]
    assert len(data.train) + len(data.validation) == 48
    assert all(Path(p).is_file() for p in data.train.inputs)


def test_split_folders_give_splits(tmp_path: Path) -> None:
    images, labels = bar_images(20)
    for split, rows in (("train", range(0, 12)), ("val", range(12, 16)), ("test", range(16, 20))):
        for i in rows:
            folder = tmp_path / split / labels[i]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(folder / f"{i}.png")
    data = load_data(FinetuneConfig(train_file=str(tmp_path)))
    assert (len(data.train), len(data.validation), len(data.test)) == (12, 4, 4)


def test_csv_paths_are_relative_to_the_csv(bars_folder: Path, tmp_path: Path) -> None:
    rows = [{"file": str(p.relative_to(bars_folder)), "y": p.parent.name} for p in bars_folder.rglob("*.png")]
    csv = bars_folder / "labels.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    data = load_data(FinetuneConfig(train_file=str(csv), image_column="file", label_column="y"))
    assert data.modality == "image" and all(Path(p).is_file() for p in data.validation.inputs)
    bad_rows = [{"file": "nowhere/missing.png", "y": "vertical"}, *rows]
    pd.DataFrame(bad_rows).to_csv(bars_folder / "bad.csv", index=False)
    bad = load_data(
        FinetuneConfig(train_file=str(bars_folder / "bad.csv"), image_column="file", label_column="y")
    )
    missing = [t for t in bad.train.inputs + bad.validation.inputs if "missing" in str(t)]
    assert missing == [str(bars_folder / "nowhere" / "missing.png")]
    backbone = load_backbone(str(build_tiny_vision_model(tmp_path, "resnet")))
    with pytest.raises(DataFileNotFoundError, match="relative to that file's folder"):
        backbone.tokenize(missing, None, 0)


def test_missing_image_column_lists_the_columns(tmp_path: Path) -> None:
    pd.DataFrame({"path": ["a.png"], "label": ["x"]}).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(DataError, match="Columns that exist: 'path', 'label'"):
        load_data(FinetuneConfig(train_file=str(tmp_path / "d.csv"), image_column="image"))


def test_numpy_archive_and_saved_datasets_images(tmp_path: Path) -> None:
    import datasets

    images, labels = bar_images(30)
    np.savez(tmp_path / "bars.npz", image=np.stack(images), label=np.array(labels))
    data = load_data(FinetuneConfig(train_file=str(tmp_path / "bars.npz")))
    assert data.modality == "image" and data.train.inputs[0].shape == (20, 20)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=sorted(set(labels)))}
    )
    ds = datasets.Dataset.from_dict(
        {
            "image": [Image.fromarray(i) for i in images],
            "label": [sorted(set(labels)).index(x) for x in labels],
        },
        features=features,
    )
    ds.save_to_disk(str(tmp_path / "saved"))
    data = load_data(FinetuneConfig(train_file=str(tmp_path / "saved")))
    assert data.modality == "image" and data.label_names == ["horizontal", "vertical"]
    backbone = load_backbone(str(build_tiny_vision_model(tmp_path / "m", "resnet")))
    assert backbone.tokenize(data.train.inputs[:2], None, 0)["pixel_values"][0].shape == (3, 32, 32)


def test_text_and_image_mismatches_are_refused(tiny_vision: dict[str, str], tiny_bert: str, bars_folder: Path,
                                               sentiment_csv: Path, tmp_path: Path) -> None:  # fmt: skip
    with pytest.raises(ConfigError, match="reads text, but the data holds images"):
        train(quiet_config(model=tiny_bert, train_file=str(bars_folder), output_dir=str(tmp_path / "a")))
    with pytest.raises(ConfigError, match="reads image, but the data holds texts"):
        train(
            quiet_config(
                model=tiny_vision["resnet"], train_file=str(sentiment_csv), output_dir=str(tmp_path / "b")
            )
        )


def _trains_all(name: str) -> bool:
    return True


def _trains_head(name: str) -> bool:
    return name.startswith("head.")


def _trains_top_stage(name: str) -> bool:
    return _trains_head(name) or ".encoder.stages.1." in name


def _trains_lora(name: str) -> bool:
    return _trains_head(name) or ".lora_" in name


@pytest.mark.parametrize(
    ("family", "options", "trains"),
    [
        ("resnet", {"strategy": "feature-extraction"}, _trains_head),
        ("resnet", {"strategy": "feature-extraction", "layers": [-2], "pooling": "max"}, _trains_head),
        ("resnet", {"strategy": "finetune", "unfreeze_layers": 1, "augment": ["affine"]}, _trains_top_stage),
        ("resnet", {"strategy": "gradual-unfreezing"}, _trains_top_stage),  # 2 epochs: head, then top stage
        ("resnet", {"strategy": "lora"}, _trains_lora),
        ("vit", {"strategy": "layerwise-lr-decay", "pooling": "cls"}, _trains_all),
        ("vit", {"strategy": "lp-ft"}, _trains_all),
        ("vit", {"strategy": "lora"}, _trains_lora),
        ("convnext", {"strategy": "finetune"}, _trains_all),
    ],
)
def test_strategies_train_save_and_reload_image_models(
    tiny_vision: dict[str, str], bars_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    family: str, options: dict, trains: Callable[[str], bool],
) -> None:  # fmt: skip
    import nlptransfer.engine.fit
    import nlptransfer.runs.finetune

    weights: dict[str, dict[str, torch.Tensor]] = {}

    def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    def fit_spy(model: TransferModel, *args, **kwargs):
        weights["before"] = params(model)
        return real_fit(model, *args, **kwargs)

    def restore_spy(self: nlptransfer.engine.fit.BestWeights) -> None:
        weights["after"] = params(self.model)  # where training ended, before the best epoch is restored
        real_restore(self)

    real_fit, real_restore = nlptransfer.runs.finetune.fit, nlptransfer.engine.fit.BestWeights.restore
    monkeypatch.setattr(nlptransfer.runs.finetune, "fit", fit_spy)
    monkeypatch.setattr(nlptransfer.engine.fit.BestWeights, "restore", restore_spy)
    out = tmp_path / "run"
    config = quiet_config(
        model=tiny_vision[family], train_file=str(bars_folder), output_dir=str(out), **options
    )
    results = train(config)
    # Exactly the weights the strategy trains moved; every other one is bit-identical to the source.
    before, after = weights["before"], weights["after"]
    assert set(before) == set(after)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {n for n in before if trains(n)}
    saved = json.loads((out / "results.json").read_text())
    assert saved["strategy"] == options["strategy"] and saved["labels"] == ["horizontal", "vertical"]
    assert results["test"] is None
    model = TransferModel.from_pretrained(out)
    for name, value in model.named_parameters():
        if not trains(name):
            assert torch.equal(value, before[name]), name
    # The reported validation accuracy is the saved model's, recomputed here from the folder names.
    validation = load_data(config).validation.inputs
    predicted = model.predict(validation).labels
    correct = [label == Path(path).parent.name for label, path in zip(predicted, validation, strict=True)]
    assert results["validation"]["accuracy"] == pytest.approx(sum(correct) / len(correct))
    files = sorted(str(p) for p in bars_folder.rglob("*.png"))[:5]
    first = model.predict(files).probabilities
    np.testing.assert_array_equal(first, TransferModel.from_pretrained(out).predict(files).probabilities)
    if options["strategy"] == "lora":
        names = [n for n, _ in model.backbone.named_parameters() if "lora_" in n]
        wanted = ("q_proj", "v_proj", "query", "value") if family == "vit" else ("convolution",)
        assert names and all(any(w in n for w in wanted) for n in names)


def test_transfer_learns_separable_images(tiny_vision: dict[str, str], tmp_path: Path) -> None:
    images, labels = bar_images(160)
    np.savez(tmp_path / "bars.npz", image=np.stack(images), label=np.array(labels))
    config = quiet_config(
        model=tiny_vision["resnet"], train_file=str(tmp_path / "bars.npz"), strategy="finetune",
        learning_rate=3e-3, body_lr_scale=1.0, epochs=8, test_split=0.2, output_dir=str(tmp_path / "run"),
    )  # fmt: skip
    assert train(config)["test"]["accuracy"] >= 0.9


def test_a_trained_run_and_its_exported_body_are_reusable(
    tiny_vision: dict[str, str], bars_folder: Path, tmp_path: Path
) -> None:
    from transformers import AutoModel

    first = tmp_path / "first"
    train(quiet_config(model=tiny_vision["resnet"], train_file=str(bars_folder), strategy="finetune",
                       output_dir=str(first)))  # fmt: skip
    assert "pipeline_tag: image-classification" in (first / "README.md").read_text()
    trained = TransferModel.from_pretrained(first).backbone
    body = tmp_path / "body"
    trained.export_pretrained(body)
    assert (body / "preprocessor_config.json").is_file()
    plain = AutoModel.from_pretrained(body)
    reloaded = load_backbone(str(body))
    for name, value in trained.model.state_dict().items():
        assert torch.equal(value, plain.state_dict()[name]), name
        assert torch.equal(value, reloaded.model.state_dict()[name]), name
    from_run = load_backbone(str(first), image_options=ImageOptions(augment=["hflip"]))
    assert from_run.options.augment == ["hflip"]
    assert all(torch.equal(v, trained.model.state_dict()[n]) for n, v in from_run.model.state_dict().items())
    with pytest.raises(ModelLoadError, match="--from_scratch would discard"):
        load_backbone(str(first), from_scratch=True)


def test_predict_accepts_arrays_paths_and_pil_images(tiny_vision: dict[str, str]) -> None:
    model = TransferModel.from_backbone(load_backbone(tiny_vision["resnet"]), ["a", "b", "c"])
    images, _ = bar_images(4)
    batch = model.predict(np.stack(images))
    assert batch.probabilities.shape == (4, 3)
    np.testing.assert_allclose(model.predict(images[0]).probabilities[0], batch.probabilities[0], atol=1e-6)
    np.testing.assert_allclose(
        model.predict(Image.fromarray(images[1])).probabilities[0], batch.probabilities[1], atol=1e-6
    )
    with pytest.raises(ConfigError, match="This image model got text"):
        model.predict(["a movie review"])


def test_best_epoch_weights_come_with_their_batchnorm_statistics(tiny_vision: dict[str, str]) -> None:
    from nlptransfer.engine.fit import BestWeights

    model = TransferModel.from_backbone(load_backbone(tiny_vision["resnet"]), ["a", "b"])
    best = BestWeights(model)
    best.cover_trainable()
    stats = [n for n in best.state if n.endswith("running_mean")]
    assert stats
    best.update()
    kept = best.state[stats[0]].clone()
    model.get_buffer(stats[0]).add_(1.0)  # a later, worse epoch moves the statistics
    best.restore()
    assert torch.equal(model.get_buffer(stats[0]), kept)


class _TinyVgg(torch.nn.Module):
    """VGG's shape in miniature: a flat ``features`` stack of conv blocks, then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip


def test_a_plain_torch_conv_base_groups_into_its_conv_blocks() -> None:
    from nlptransfer.backbones.torch_vision import TorchVisionBackbone
    from nlptransfer.backbones.vision import PixelSpec

    backbone = TorchVisionBackbone(_TinyVgg().features, PixelSpec(), (32, 32), "torchvision:tiny-vgg")
    assert [g.kind for g in backbone.layer_groups()] == ["block"] * 3
    assert backbone.hidden_size == 8
    model = TransferModel.from_backbone(backbone, ["a", "b"])
    images, _ = bar_images(3, size=40)
    assert model.predict(images).probabilities.shape == (3, 2)
    assert backbone.tokenize(images, None, 0)["pixel_values"][0].shape == (3, 32, 32)


@pytest.mark.parametrize(
    "name", ["timm:vgg16", "timm:inception_v3", "torchvision:alexnet", "torchvision:vgg16"]
)
def test_timm_and_torchvision_models_when_installed(name: str) -> None:
    pytest.importorskip(name.split(":")[0])
    backbone = load_backbone(name, from_scratch=True)
    assert backbone.modality == "image" and backbone.num_blocks() >= 3
    model = TransferModel.from_backbone(backbone, ["a", "b"])
    assert model.predict(bar_images(2)[0]).probabilities.shape == (2, 2)


def test_timm_missing_names_the_extra() -> None:
    import importlib.util

    if importlib.util.find_spec("timm") is not None:
        pytest.skip("timm is installed")
    with pytest.raises(ModelLoadError, match=r"nlptransfer\[timm\]"):
        load_backbone("timm:resnet50")
