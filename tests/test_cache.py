"""The feature cache: hits skip the body and change nothing; every key change misses; writes are atomic."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from conftest import REPO, free_port, run_script, sentiment_frame

import nlptransfer.engine.cache as cache_module
from nlptransfer import ConfigError, FinetuneConfig, TransferModel, get_strategy, train
from nlptransfer.data import FeatureDataset, Split
from nlptransfer.engine.cache import CACHE_ENV, FEATURES_FILE, META_FILE, TMP_PREFIX, CacheKey, FeatureCache
from nlptransfer.engine.context import RunContext
from nlptransfer.engine.features import extract_features
from nlptransfer.engine.inference import encode_split
from nlptransfer.tasks.metrics import MetricSet

LABELS = ["neg", "pos"]


def _texts(n: int = 24, seed: int = 0) -> Split:
    frame = sentiment_frame(n, seed)
    return Split(frame["text"].tolist(), [int(v == "pos") for v in frame["label"]])


def _model(tiny_bert: str, **options) -> TransferModel:
    torch.manual_seed(0)
    options.setdefault("layers", [-2, -1])
    return TransferModel.from_backbone(tiny_bert, LABELS, **options)


def _ctx(**options) -> RunContext:
    config = FinetuneConfig(**{"strategy": "feature-extraction", **options})
    return RunContext(config, get_strategy(config.strategy), Accelerator(cpu=True), MetricSet(config.metrics))


class BodyCalls:
    """Counts the frozen body's forward passes."""

    def __init__(self, model: TransferModel, patch: pytest.MonkeyPatch) -> None:
        self.count = 0
        forward = model.backbone.forward

        def counting(*args, **kwargs):
            self.count += 1
            return forward(*args, **kwargs)

        patch.setattr(model.backbone, "forward", counting)


def _extract(
    model: TransferModel, split: Split | None = None, **options
) -> tuple[dict[str, FeatureDataset], int]:
    """Features of one split named train, and how often the body ran to get them."""
    with pytest.MonkeyPatch.context() as patch:
        calls = BodyCalls(model, patch)
        encoded = {"train": encode_split(model, split or _texts())}
        features, _ = extract_features(model, encoded, _ctx(**options))
    return features, calls.count


def _array(dataset: FeatureDataset) -> np.ndarray:
    return np.asarray(dataset.features)


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def test_a_hit_gives_identical_features_without_running_the_body(
    tiny_bert: str, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = _model(tiny_bert)
    first, first_calls = _extract(model, cache_dir=str(cache_dir))
    with caplog.at_level(logging.INFO, logger="nlptransfer.engine.features"):
        second, second_calls = _extract(model, cache_dir=str(cache_dir))
    assert first_calls > 0 and second_calls == 0
    assert "feature cache hit for train" in caplog.text
    assert first["train"].cache_info["hit"] is False and second["train"].cache_info["hit"] is True
    assert isinstance(second["train"].features, np.memmap)  # read lazily, not loaded up front
    assert np.array_equal(_array(first["train"]), _array(second["train"]))
    item = second["train"][3]
    assert item["features"].dtype == torch.float32 and item["features"].shape == (2, 32)
    assert torch.equal(item["features"], first["train"][3]["features"])


def _perturbed(model: TransferModel) -> TransferModel:
    with torch.no_grad():
        next(model.backbone.parameters()).view(-1)[0] += 1e-3
    return model


CHANGES = {
    "weights": (lambda bert: _perturbed(_model(bert)), {}, None),
    "max_length": (lambda bert: _model(bert, max_length=6), {}, None),
    "layers": (lambda bert: _model(bert, layers=[-1]), {}, None),
    "pooling": (lambda bert: _model(bert, pooling="cls"), {}, None),
    "texts": (_model, {}, _texts(seed=1)),
    "mixed_precision": (_model, {"mixed_precision": "bf16"}, None),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_any_change_to_what_makes_the_features_is_a_miss(
    tiny_bert: str, cache_dir: Path, change: str
) -> None:
    _extract(_model(tiny_bert))
    build, options, split = CHANGES[change]
    features, calls = _extract(build(tiny_bert), split, **options)
    assert calls > 0 and features["train"].cache_info["hit"] is False
    assert len([p for p in cache_dir.iterdir() if not p.name.startswith(".")]) == 2


def test_what_comes_after_the_pooled_layers_is_a_hit(tiny_bert: str, cache_dir: Path) -> None:
    """The layer mix, head and labels act on cached features: changing them reuses the entry."""
    _extract(_model(tiny_bert))
    other = _model(tiny_bert, layer_mix="scalar", head_dropout=0.5)
    split = _texts()
    split.labels = [1 - y for y in split.labels]
    features, calls = _extract(other, split, learning_rate=0.5, epochs=3)
    assert calls == 0 and features["train"].cache_info["hit"] is True


def test_no_feature_cache_writes_nothing(tiny_bert: str, cache_dir: Path) -> None:
    for _ in range(2):
        features, calls = _extract(_model(tiny_bert), feature_cache=False)
        assert calls > 0 and features["train"].cache_info is None
    assert not cache_dir.exists()


def test_cache_dir_flag_beats_the_environment(tiny_bert: str, cache_dir: Path, tmp_path: Path) -> None:
    _extract(_model(tiny_bert), cache_dir=str(tmp_path / "flag"))
    assert any((tmp_path / "flag").iterdir()) and not cache_dir.exists()


def test_an_unusable_cache_dir_is_a_config_error(tiny_bert: str, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="--no-feature_cache"):
        _extract(_model(tiny_bert), cache_dir=str(blocker / "cache"))


def _key(n: int = 0) -> CacheKey:
    return CacheKey({"test": n})


def test_a_writer_killed_before_the_rename_leaves_no_entry(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(cache_module.os, "rename", killed)
        # A killed process runs no cleanup: keep the staging folder as it would be left.
        patch.setattr(cache_module.shutil, "rmtree", lambda *a, **k: None)
        cache.store(_key(), np.ones((4, 2, 3), dtype=np.float32))
    leftovers = list(tmp_path.glob(f"{TMP_PREFIX}*"))
    assert len(leftovers) == 1 and (leftovers[0] / FEATURES_FILE).is_file()
    assert cache.load(_key(), rows=4) is None  # the complete-looking leftover is never read
    cache.store(_key(), np.ones((4, 2, 3), dtype=np.float32))
    assert cache.load(_key(), rows=4) is not None
    # Stale leftovers go when a cache is next opened; fresh ones may belong to a live writer.
    FeatureCache(tmp_path)
    assert leftovers[0].exists()
    os.utime(leftovers[0], (0, 0))
    FeatureCache(tmp_path)
    assert not leftovers[0].exists() and cache.path(_key()).is_dir()


def test_an_entry_written_meanwhile_by_another_process_is_kept(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    cache.store(_key(), np.zeros((3, 1, 2), dtype=np.float32))
    cache.store(_key(), np.ones((3, 1, 2), dtype=np.float32))
    assert np.array_equal(cache.load(_key(), rows=3), np.zeros((3, 1, 2)))
    assert not list(tmp_path.glob(f"{TMP_PREFIX}*"))


def test_a_rename_race_keeps_the_first_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two writers pass the existence check together; the second rename fails and is not an error."""
    cache = FeatureCache(tmp_path)
    rename = os.rename

    def publish_theirs_first(src, dst):
        if not Path(dst).exists():
            other = FeatureCache(tmp_path)
            monkeypatch.setattr(cache_module.os, "rename", rename)
            other.store(_key(), np.zeros((2, 1, 1), dtype=np.float32))
        return rename(src, dst)

    monkeypatch.setattr(cache_module.os, "rename", publish_theirs_first)
    cache.store(_key(), np.ones((2, 1, 1), dtype=np.float32))
    assert np.array_equal(cache.load(_key(), rows=2), np.zeros((2, 1, 1)))


def _truncate_npy(entry: Path) -> None:
    data = (entry / FEATURES_FILE).read_bytes()
    (entry / FEATURES_FILE).write_bytes(data[: len(data) // 2])


def _garble_meta(entry: Path) -> None:
    (entry / META_FILE).write_text("{not json")


def _drop_meta(entry: Path) -> None:
    (entry / META_FILE).unlink()


def _wrong_shape(entry: Path) -> None:
    meta = json.loads((entry / META_FILE).read_text())
    meta["shape"][0] += 1
    (entry / META_FILE).write_text(json.dumps(meta))


@pytest.mark.parametrize("damage", [_truncate_npy, _garble_meta, _drop_meta, _wrong_shape])
def test_a_damaged_entry_is_recomputed_and_rewritten(
    tiny_bert: str, cache_dir: Path, caplog: pytest.LogCaptureFixture, damage
) -> None:
    first, _ = _extract(_model(tiny_bert))
    entry = cache_dir / first["train"].cache_info["entry"]
    damage(entry)
    with caplog.at_level(logging.WARNING):
        second, calls = _extract(_model(tiny_bert))
    assert calls > 0 and "is damaged" in caplog.text
    assert np.array_equal(_array(first["train"]), _array(second["train"]))
    third, calls = _extract(_model(tiny_bert))
    assert calls == 0 and np.array_equal(_array(first["train"]), _array(third["train"]))


def _write_data(folder: Path) -> None:
    sentiment_frame(120).to_csv(folder / "train.csv", index=False)
    sentiment_frame(40, seed=1).to_csv(folder / "test.csv", index=False)


def _run_options(tiny_bert: str, folder: Path, out: str) -> dict:
    return dict(
        model=tiny_bert, train_file=str(folder / "train.csv"), test_file=str(folder / "test.csv"),
        strategy="feature-extraction", output_dir=str(folder / out), epochs=8, batch_size=16,
        learning_rate=5e-3,
    )  # fmt: skip


def test_a_second_run_hits_the_cache_and_gives_identical_results(tiny_bert: str, tmp_path: Path) -> None:
    _write_data(tmp_path)
    first = train(FinetuneConfig(**_run_options(tiny_bert, tmp_path, "a")))
    second = train(FinetuneConfig(**_run_options(tiny_bert, tmp_path, "b")))
    assert first["feature_cache"]["hits"] == {"train": False, "validation": False, "test": False}
    assert second["feature_cache"]["hits"] == {"train": True, "validation": True, "test": True}
    saved = json.loads((tmp_path / "b" / "results.json").read_text())
    assert saved["feature_cache"]["enabled"] and all(saved["feature_cache"]["hits"].values())
    assert json.loads((tmp_path / "a" / "results.json").read_text())["test"] == saved["test"]
    assert first["history"] == second["history"]


def test_finetune_reports_no_feature_cache(tiny_bert: str, tmp_path: Path) -> None:
    _write_data(tmp_path)
    options = {**_run_options(tiny_bert, tmp_path, "ft"), "epochs": 1, "strategy": "finetune"}
    assert train(FinetuneConfig(**options))["feature_cache"] is None


def _torchrun(tiny_bert: str, folder: Path, out: str) -> dict:
    options = _run_options(tiny_bert, folder, out)
    flags = [f"--{name}={value}" for name, value in options.items()]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    script = str(REPO / "recipes" / "finetune.py")
    result = run_script([*launcher, "--master_port", str(free_port()), script, *flags])
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((folder / out / "results.json").read_text())


def test_two_processes_miss_then_hit_with_the_features_of_one_process(
    tiny_bert: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_data(tmp_path)
    cache_dir = Path(os.environ[CACHE_ENV])
    miss = _torchrun(tiny_bert, tmp_path, "miss")
    hit = _torchrun(tiny_bert, tmp_path, "hit")
    assert not any(miss["feature_cache"]["hits"].values()) and all(hit["feature_cache"]["hits"].values())
    assert hit["test"] == miss["test"] and hit["history"] == miss["history"]
    # One process computing the same splits gets the very features the two processes cached.
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "fresh"))
    alone = train(FinetuneConfig(**_run_options(tiny_bert, tmp_path, "alone")))
    assert not any(alone["feature_cache"]["hits"].values())
    assert alone["feature_cache"]["entries"] == miss["feature_cache"]["entries"]
    for entry in miss["feature_cache"]["entries"].values():
        shared = np.load(cache_dir / entry / FEATURES_FILE)
        assert np.array_equal(shared, np.load(tmp_path / "fresh" / entry / FEATURES_FILE))
