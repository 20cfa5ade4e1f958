"""The activation cache: a frozen bottom of the body run once per example, not once per batch.

Partial fine-tuning (``--unfreeze_layers K``, the later phases of gradual unfreezing) trains the
top blocks only. The embeddings and the blocks below the first trainable one are frozen and run
in eval mode (``TransferModel.train``), so what they feed that block is the same for an example in
every epoch. This module computes it once per example (sharded over processes like feature
extraction), stores it in the feature cache's folder (one memory-mapped entry per split, keyed by
the frozen weights, the tokens, the block, the precision and the device; written atomically; a
damaged entry is a miss), and the phase trains on it: each batch carries those states and the
body's forward pass starts at that block (``Backbone.replaying``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from nlptransfer.data import ActivationDataset, Collator, EncodedDataset
from nlptransfer.data.loaders import BLOCK_INPUT, REPLAY_BLOCK
from nlptransfer.engine.cache import CacheKey, FeatureCache, examples_fingerprint, tensors_fingerprint
from nlptransfer.engine.context import RunContext
from nlptransfer.engine.features import gpu_ids, on_every_process, run_key_parts
from nlptransfer.engine.inference import inference_loader
from nlptransfer.errors import ConfigError
from nlptransfer.files import resolve_cache_dir
from nlptransfer.model.transfer import TransferModel

logger = logging.getLogger(__name__)

OFFSETS = "offsets"
# Replaying what enters a block must give the features the whole body gives (on the same batch:
# up to float rounding). A model whose blocks pass more than hidden states fails this.
REPLAY_TOLERANCE = 1e-4


@dataclass
class ActivationReport:
    """For results.json: whether the phases that trained the top of the body ran on stored states."""

    phases: list[dict[str, Any]] = field(default_factory=list)

    def add(self, phase: str, reason: str, datasets: Mapping[str, ActivationDataset] | None = None) -> None:
        entry: dict[str, Any] = {"phase": phase, "used": datasets is not None, "reason": reason}
        if datasets is not None:
            infos = {name: dataset.cache_info or {} for name, dataset in datasets.items()}
            entry["block"] = next(iter(datasets.values())).block
            entry["dir"] = next(iter(infos.values())).get("dir")
            entry["hits"] = {name: info.get("hit", False) for name, info in infos.items()}
            entry["entries"] = {name: info.get("entry") for name, info in infos.items()}
        self.phases.append(entry)

    def to_dict(self) -> dict[str, Any] | None:
        return {"phases": self.phases} if self.phases else None


def activation_block(
    model: TransferModel, ctx: RunContext, reads_activations: bool
) -> tuple[int | None, str]:
    """The block whose input the cache can serve for the phase the model is configured for, or None;
    and why (not)."""
    backbone, config = model.backbone, ctx.config
    if not config.activation_cache:
        return None, "off (--no-activation_cache)"
    if not backbone.replays_blocks:
        return None, f"the {backbone.registry_name} backbone cannot start its forward pass at a block"
    if not reads_activations:
        return None, "this phase's objective reads token batches of its own"
    block, blocks = backbone.frozen_bottom(), backbone.num_blocks()
    if block == 0 or block >= blocks:
        return None, "no frozen bottom below trainable blocks (the embeddings or the first block train)"
    lowest = min(i % (blocks + 1) for i in model.pooling.layers)
    if lowest <= block:
        return None, f"the pooled layers {list(model.pooling.layers)} read below block {block}"
    if model.long_text is not None or model.pair_encoding == "separate":
        return None, "texts read in windows or in separate pairs are not cached yet"
    return block, f"embeddings and blocks 0-{block - 1} frozen: their output is computed once per example"


def activation_datasets(
    model: TransferModel, encoded: Mapping[str, EncodedDataset], ctx: RunContext, block: int
) -> tuple[dict[str, ActivationDataset] | None, str]:
    """Every split with the states entering ``block`` (from the cache, or computed and stored); None
    when they would exceed ``--activation_cache_max_gb`` or replaying them does not reproduce the
    model's features. With the reason."""
    width = model.backbone.state_width(block)
    tokens = sum(sum(dataset.lengths()) for dataset in encoded.values())
    gigabytes = tokens * width * 4 / 2**30
    limit = ctx.config.activation_cache_max_gb
    if gigabytes > limit:
        return None, f"{gigabytes:.2f} GB of states, over --activation_cache_max_gb {limit:g}"
    model.to(ctx.accelerator.device)
    gap = replay_gap(model, encoded["train"], block)
    if gap > REPLAY_TOLERANCE:
        why = (
            f"replaying what enters block {block} changed the features by {gap:.2g}"
            if np.isfinite(gap)
            else f"its forward pass cannot start at block {block} (its blocks pass more than hidden states)"
        )
        logger.warning("The activation cache does not apply to this model: %s. Running the whole body "
                       "every batch.", why)  # fmt: skip
        return None, why
    cache = FeatureCache(resolve_cache_dir(ctx.config.cache_dir), off_flag="--no-activation_cache")
    bottom = bottom_key_parts(model, ctx, block)
    datasets = {}
    was_training = model.training
    model.eval()
    # Inference loaders draw seeds from the global RNG and a hit draws none: restoring it keeps the
    # training that follows (dropout, shuffling) the same either way, and the same as uncached.
    with torch.random.fork_rng(devices=gpu_ids(ctx.accelerator.device)):
        for name, dataset in encoded.items():
            datasets[name] = _split_states(name, dataset, model, ctx, cache, bottom, block)
    model.train(was_training)
    return datasets, f"{gigabytes:.3f} GB of states entering block {block}"


def bottom_key_parts(model: TransferModel, ctx: RunContext, block: int) -> dict[str, Any]:
    """Everything but the examples that changes what the frozen bottom feeds ``block``."""
    backbone = model.backbone
    frozen: dict[str, torch.Tensor] = {}
    blocks = 0
    for group in backbone.layer_groups():
        if group.kind == "final" or (group.kind == "block" and blocks == block):
            break
        blocks += group.kind == "block"
        frozen.update(dict(group.parameters))
    frozen.update(backbone.named_buffers())
    return {**run_key_parts(model, ctx), "kind": "activations", "block": block,
            "weights": tensors_fingerprint(frozen)}  # fmt: skip


def _split_states(
    name: str, dataset: EncodedDataset, model: TransferModel, ctx: RunContext, cache: FeatureCache,
    bottom: Mapping[str, Any], block: int,
) -> ActivationDataset:  # fmt: skip
    key = CacheKey({**bottom, "examples": len(dataset), "tokens": examples_fingerprint(dataset.encodings)})
    offsets = _offsets(dataset)
    info = {"dir": str(cache.root), "entry": key.digest}
    stored = cache.load_with(key, [OFFSETS])
    valid = stored is not None and np.array_equal(stored[1][OFFSETS], offsets)
    if on_every_process(valid, ctx):
        assert stored is not None
        logger.info("activation cache hit for %s: %s", name, cache.path(key))
        return ActivationDataset(dataset, block, stored[0], offsets, {**info, "hit": True})
    logger.info("activation cache miss for %s: running blocks 0-%d once", name, block - 1)
    states = _compute_states(name, dataset, model, ctx, block, offsets)
    if ctx.accelerator.is_local_main_process:
        try:
            cache.store(key, states, {OFFSETS: offsets})
        except OSError as err:  # a full disk must not end a run whose states are in memory
            logger.warning("Could not write activation cache entry %s (%s); keeping it in memory.",
                           key.digest, err)  # fmt: skip
    ctx.accelerator.wait_for_everyone()
    stored = cache.load_with(key, [OFFSETS])
    if stored is not None:  # memory-mapped: the pages are shared, and freed under memory pressure
        states = stored[0]
    return ActivationDataset(dataset, block, states, offsets, {**info, "hit": False})


def _offsets(dataset: EncodedDataset) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(dataset.lengths(), dtype=np.int64)]).astype(np.int64)


def _compute_states(
    name: str, dataset: EncodedDataset, model: TransferModel, ctx: RunContext, block: int,
    offsets: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """The states entering ``block`` of every example, flat (tokens, hidden), sharded over processes;
    every process gets them all."""
    accelerator = ctx.accelerator
    states = np.zeros((int(offsets[-1]), model.backbone.state_width(block)), dtype=np.float32)
    loader = accelerator.prepare_data_loader(inference_loader(dataset, model, ctx.config.eval_batch_size))
    with torch.inference_mode(), accelerator.autocast():
        for batch in tqdm(loader, desc=f"activations ({name})", disable=not ctx.show_progress, leave=False):
            batch.pop("labels")
            idx = batch.pop("idx")
            values = model.backbone.block_input(block, **batch).float()
            mask = batch["attention_mask"]
            # Shards end with batches of other sizes and lengths: pad both, gather, drop the padding.
            values, mask = (_gathered(accelerator, t) for t in (values, mask))
            idx = accelerator.gather(accelerator.pad_across_processes(idx, dim=0, pad_index=-1))
            for row, row_mask, i in zip(values.cpu(), mask.cpu(), idx.cpu().tolist(), strict=True):
                if i >= 0:
                    states[offsets[i] : offsets[i + 1]] = row[row_mask.bool()].numpy()
    return states


def _gathered(accelerator: Any, values: torch.Tensor) -> torch.Tensor:
    return accelerator.gather(
        accelerator.pad_across_processes(accelerator.pad_across_processes(values, dim=1), dim=0)
    )


def replay_gap(model: TransferModel, dataset: EncodedDataset, block: int, examples: int = 8) -> float:
    """The largest difference between the features of a few examples computed through the whole
    body and replayed from what enters ``block`` (inf when the model cannot be replayed)."""
    batch = Collator(model.backbone)([dataset[i] for i in range(min(examples, len(dataset)))])
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in batch.items() if k not in ("labels", "idx")}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            whole = model.layer_features(**inputs)
            states = model.backbone.block_input(block, **inputs)
            replayed = model.layer_features(**inputs, **{BLOCK_INPUT: states, REPLAY_BLOCK: block})
    # A block that takes or returns more than hidden states (T5's position bias) cannot be replayed.
    except (ConfigError, RuntimeError, TypeError, ValueError, IndexError) as err:
        logger.debug("replaying block %d failed: %s", block, err)
        return float("inf")
    finally:
        model.train(was_training)
    return float((replayed - whole).abs().max())


__all__ = ["ActivationReport", "activation_block", "activation_datasets", "bottom_key_parts", "replay_gap"]
