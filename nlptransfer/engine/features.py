"""Body features for frozen-body training: computed once per example, and cached across runs.

A split's features are ``model.layer_features`` (pooled per layer, before the layer
mix and the head), so runs that change only the head, the mix, the learning rate
or the epochs reuse them from the :class:`~nlptransfer.engine.cache.FeatureCache`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from nlptransfer.data import EncodedDataset, FeatureDataset
from nlptransfer.engine.cache import (
    CacheKey,
    FeatureCache,
    examples_fingerprint,
    weights_fingerprint,
)
from nlptransfer.engine.context import RunContext
from nlptransfer.engine.inference import run_inference
from nlptransfer.files import resolve_cache_dir
from nlptransfer.model.transfer import TransferModel
from nlptransfer.version import __version__

logger = logging.getLogger(__name__)


def extract_features(
    model: TransferModel, encoded: dict[str, EncodedDataset], ctx: RunContext, use_cache: bool = True
) -> tuple[dict[str, Dataset], dict[str, float]]:
    """``model.layer_features`` of every split, from the cache or under inference mode; seconds per split.

    ``use_cache=False`` for weights no other run will have (a body this run trained).
    """
    start = time.perf_counter()
    device = ctx.accelerator.device
    model.to(device).eval()
    cache = open_cache(ctx) if use_cache else None
    body = body_key_parts(model, ctx) if cache is not None else {}
    features: dict[str, Dataset] = {}
    # Per split, so a report can tell training's share from the test set's.
    seconds: dict[str, float] = {}
    # Inference loaders draw seeds from the global RNG; a hit draws none. Restoring the RNG
    # afterwards keeps the training that follows (dropout, shuffling) identical either way.
    with torch.random.fork_rng(devices=gpu_ids(device)):
        for name, dataset in encoded.items():
            features[name] = _split_features(name, dataset, model, ctx, cache, body)
            seconds[name] = time.perf_counter() - start
            start += seconds[name]
    return features, seconds


def gpu_ids(device: torch.device) -> list[int]:
    """The GPU ``device`` is (for ``torch.random.fork_rng``); none on CPU."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def open_cache(ctx: RunContext) -> FeatureCache | None:
    """The feature cache of this run, or None under ``--no-feature_cache``."""
    if not ctx.config.feature_cache:
        return None
    return FeatureCache(resolve_cache_dir(ctx.config.cache_dir))


def body_key_parts(model: TransferModel, ctx: RunContext) -> dict[str, Any]:
    """Everything but the examples that changes ``layer_features``; hashes the weights once."""
    return features_key_parts(model, ctx.accelerator.device.type, ctx.config.mixed_precision)


def features_key_parts(model: TransferModel, device_type: str, mixed_precision: str = "no") -> dict[str, Any]:
    """``body_key_parts`` without a run: ``nlptransfer embed`` keys its features the same way, so
    its entries and training's are one cache."""
    start = time.perf_counter()
    parts = {
        **model_key_parts(model, device_type, mixed_precision),
        "weights": weights_fingerprint(model.backbone),
        "pooling": model.pooling.mode,
        "layers": list(model.pooling.layers),
        # Long texts in windows: the windows' tokens are in the examples' key; how they pool is here.
        "long_text": asdict(model.long_text) if model.long_text is not None else None,
        "pair_encoding": model.pair_encoding,
    }
    logger.debug("fingerprinted the body's weights in %.2f s", time.perf_counter() - start)
    return parts


def run_key_parts(model: TransferModel, ctx: RunContext) -> dict[str, Any]:
    """What every cached output of the body depends on besides its weights and the examples."""
    return model_key_parts(model, ctx.accelerator.device.type, ctx.config.mixed_precision)


def model_key_parts(model: TransferModel, device_type: str, mixed_precision: str = "no") -> dict[str, Any]:
    """``run_key_parts`` for a body run on ``device_type`` ("cpu", "cuda") outside a run."""
    backbone = model.backbone
    return {
        "backbone": {"type": backbone.registry_name, **backbone.get_config()},
        "dtypes": sorted({str(p.dtype) for p in backbone.parameters()}),
        "mixed_precision": mixed_precision,
        # CPU and GPU kernels round differently: a cached output must be bit-for-bit what this run computes.
        "device": device_type,
        # A new version may pool differently; recomputing once per upgrade is cheap insurance.
        "nlptransfer_version": __version__,
    }


def split_key(body: Mapping[str, Any], dataset: EncodedDataset) -> CacheKey:
    return CacheKey({**body, "examples": len(dataset), "tokens": examples_fingerprint(dataset.encodings)})


def _split_features(
    name: str,
    dataset: EncodedDataset,
    model: TransferModel,
    ctx: RunContext,
    cache: FeatureCache | None,
    body: Mapping[str, Any],
) -> FeatureDataset:
    if cache is None:
        return FeatureDataset(_compute(name, dataset, model, ctx), dataset.labels)
    key = split_key(body, dataset)
    info = {"dir": str(cache.root), "entry": key.digest}
    cached = cache.load(key, rows=len(dataset))
    # run_inference gathers across processes: either every process reads the cache or all compute.
    if on_every_process(cached is not None, ctx):
        logger.info("feature cache hit for %s: %s", name, cache.path(key))
        return FeatureDataset(cached, dataset.labels, {**info, "hit": True})
    logger.info("feature cache miss for %s: running the body", name)
    values = _compute(name, dataset, model, ctx)
    # Every process already holds the gathered features; one writer per machine is enough.
    if ctx.accelerator.is_local_main_process:
        store_features(cache, key, values)
    return FeatureDataset(values, dataset.labels, {**info, "hit": False})


def _compute(name: str, dataset: EncodedDataset, model: TransferModel, ctx: RunContext) -> torch.Tensor:
    return run_inference(model.layer_features, dataset, model, ctx, f"features ({name})")


def store_features(cache: FeatureCache, key: CacheKey, values: torch.Tensor | np.ndarray) -> None:
    """Write a cache entry; a failed write (a full disk) is a warning: the features are in memory."""
    try:
        path = cache.store(key, values.numpy() if isinstance(values, torch.Tensor) else values)
    except OSError as err:  # a full disk must not end a run whose features are in memory
        logger.warning("Could not write feature cache entry %s (%s); going on without it.", key.digest, err)
        return
    logger.info("feature cache: wrote %s", path)


def on_every_process(flag: bool, ctx: RunContext) -> bool:
    """True when ``flag`` holds on every process (a cache hit must be one everywhere, or all compute)."""
    accelerator = ctx.accelerator
    if accelerator.num_processes == 1:
        return flag
    flags = accelerator.gather(torch.tensor([int(flag)], device=accelerator.device))
    return bool(flags.min().item())


def feature_cache_report(datasets: Mapping[str, Dataset]) -> dict[str, Any] | None:
    """For results.json: the cache folder and which splits were hits; None if nothing was extracted."""
    infos = {name: ds.cache_info for name, ds in datasets.items() if isinstance(ds, FeatureDataset)}
    if not infos:
        return None
    if any(info is None for info in infos.values()):
        return {"enabled": False}
    return {
        "enabled": True,
        "dir": next(iter(infos.values()))["dir"],
        "hits": {name: info["hit"] for name, info in infos.items()},
        "entries": {name: info["entry"] for name, info in infos.items()},
    }


__all__ = [
    "body_key_parts",
    "extract_features",
    "feature_cache_report",
    "features_key_parts",
    "gpu_ids",
    "model_key_parts",
    "on_every_process",
    "open_cache",
    "run_key_parts",
    "split_key",
    "store_features",
]
