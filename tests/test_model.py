"""TransferModel: save/load round trip, predict, and damaged saves."""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from nlptransfer import ModelLoadError, TransferModel
from nlptransfer.errors import SaveError
from nlptransfer.model.transfer import CONFIG_NAME, WEIGHTS_NAME

TEXTS = ["good great movie", "awful boring plot", "", "😀 wonderful film " * 30]


@pytest.fixture
def model(tiny_bert: str) -> TransferModel:
    torch.manual_seed(0)
    return TransferModel.from_backbone(
        tiny_bert, ["neg", "pos", "meh"], layers=[-2, -1], max_length=32
    ).eval()


def _logits(model: TransferModel) -> torch.Tensor:
    batch = model.backbone.collate(model.preprocess(TEXTS))
    with torch.inference_mode():
        return model(**batch)


def test_save_load_round_trip_gives_identical_logits(model: TransferModel, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path / "saved")
    loaded = TransferModel.from_pretrained(tmp_path / "saved")
    assert loaded.labels == ["neg", "pos", "meh"]
    assert loaded.max_length == 32
    assert loaded.pooling.layers == [-2, -1]
    assert torch.equal(_logits(model), _logits(loaded))
    assert not [p.name for p in (tmp_path / "saved").iterdir() if p.name.startswith(".saving")]


def test_saved_config_names_registry_entries_only(model: TransferModel, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["backbone"]["type"] == "hf-text"
    assert config["head"]["type"] == "linear"
    assert "." not in json.dumps({k: v["type"] for k, v in config.items() if isinstance(v, dict)})


def test_predict_returns_labels_and_probabilities(model: TransferModel) -> None:
    predictions = model.predict(TEXTS, batch_size=2)
    assert len(predictions.labels) == len(TEXTS)
    assert set(predictions.labels) <= {"neg", "pos", "meh"}
    assert np.allclose(predictions.probabilities.sum(1), 1.0, atol=1e-5)
    expected = torch.softmax(_logits(model), -1).numpy()
    assert np.allclose(predictions.probabilities, expected, atol=1e-5)  # order restored after sorting
    record = predictions.to_records()[0]
    assert record["label"] == predictions.labels[0]
    assert set(record["probabilities"]) == {"neg", "pos", "meh"}


def test_predict_accepts_a_single_string(model: TransferModel) -> None:
    assert len(model.predict("good film").labels) == 1


def test_loading_a_folder_without_config_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=CONFIG_NAME):
        TransferModel.from_pretrained(tmp_path)


def _garble_header(data: bytes) -> bytes:
    return data[:8] + b"{not json" + data[17:]


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:1000],  # truncated
        lambda data: data[: len(data) // 2],
        _garble_header,
        lambda data: bytes(reversed(data)),  # header length becomes nonsense
        lambda data: b"",
    ],
    ids=["truncated", "half", "garbled-header", "scrambled", "empty"],
)
def test_truncated_or_corrupt_weights_are_a_clear_error(model: TransferModel, tmp_path: Path, damage) -> None:
    model.save_pretrained(tmp_path)
    weights = tmp_path / WEIGHTS_NAME
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(ModelLoadError, match="truncated"):
        TransferModel.from_pretrained(tmp_path)


def test_label_count_mismatch_is_a_clear_error(model: TransferModel, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["labels"] = ["a", "b"]
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="3 outputs but 2 label names"):
        TransferModel.from_pretrained(tmp_path)


def test_unknown_config_keys_warn_and_load(model: TransferModel, tmp_path: Path, caplog) -> None:
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["from_the_future"] = True
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        TransferModel.from_pretrained(tmp_path)
    assert "from_the_future" in caplog.text


def test_tampered_type_cannot_import_code(model: TransferModel, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["head"]["type"] = "os.system"
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"Unknown head 'os\.system'"):
        TransferModel.from_pretrained(tmp_path)


def test_resaving_over_a_model_replaces_it(model: TransferModel, tiny_bert: str, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path)
    other = TransferModel.from_backbone(tiny_bert, ["x", "y"])
    other.save_pretrained(tmp_path)
    assert TransferModel.from_pretrained(tmp_path).labels == ["x", "y"]


def test_unknown_head_options_from_a_newer_version_warn_and_load(
    model: TransferModel, tmp_path: Path, caplog
) -> None:
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["head"]["future_option"] = 3
    config["nlptransfer_version"] = "99.0.0"
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        loaded = TransferModel.from_pretrained(tmp_path)
    assert "future_option" in caplog.text
    assert "99.0.0" in caplog.text and "newer" in caplog.text
    torch.testing.assert_close(_logits(loaded), _logits(model))


def test_a_head_config_missing_an_argument_is_a_clear_error(model: TransferModel, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    del config["head"]["in_features"]
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="in_features"):
        TransferModel.from_pretrained(tmp_path)


def test_a_full_disk_while_saving_keeps_the_model_saved_before(
    model: TransferModel, tiny_bert: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model.save_pretrained(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    other = TransferModel.from_backbone(tiny_bert, ["x", "y"])

    def full_disk(module: torch.nn.Module, filename: str) -> None:
        Path(filename).write_bytes(b"\0" * 100)  # a partial file, as a real ENOSPC leaves
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr("nlptransfer.model.transfer.save_model", full_disk)
    with pytest.raises(SaveError, match="No space left on device") as caught:
        other.save_pretrained(tmp_path)
    assert isinstance(caught.value, OSError) and "unchanged" in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    torch.testing.assert_close(_logits(TransferModel.from_pretrained(tmp_path)), _logits(model))


def test_texts_far_beyond_max_length_are_truncated_with_a_warning(tiny_bert: str, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        model = TransferModel.from_backbone(tiny_bert, ["neg", "pos"], max_length=100_000).eval()
    limit = model.backbone.max_positions
    assert "exceeds what the model accepts" in caplog.text and model.max_length == limit
    huge = "a wonderful film " * 20_000  # 60,000 words
    assert len(model.preprocess([huge])[0]["input_ids"]) == limit
    probabilities = model.predict([huge, "fine"]).probabilities
    assert np.isfinite(probabilities).all()
