"""Body features for frozen-body training: computed once per example for the whole run."""

from __future__ import annotations

import time

from torch.utils.data import Dataset

from nlptransfer.context import RunContext
from nlptransfer.data import EncodedDataset, FeatureDataset
from nlptransfer.inference import run_inference
from nlptransfer.model import TransferModel


def extract_features(
    model: TransferModel, encoded: dict[str, EncodedDataset], ctx: RunContext
) -> tuple[dict[str, Dataset], float]:
    """``model.layer_features`` of every split under inference mode; and the seconds it took."""
    start = time.perf_counter()
    model.to(ctx.accelerator.device).eval()
    features: dict[str, Dataset] = {}
    for name, dataset in encoded.items():
        values = run_inference(model.layer_features, dataset, model, ctx, f"features ({name})")
        features[name] = FeatureDataset(values, dataset.labels)
    return features, time.perf_counter() - start
