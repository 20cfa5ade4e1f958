"""One AdamW step over MiniLM's parameters (22.6M) with each implementation torch offers.

    HF_HUB_OFFLINE=1 python scripts/bench/adamw.py [--steps 20]

The training loop uses the fused kernel (``nlptransfer.engine.loop.adamw``); this prints the
median milliseconds per step of the fused, foreach and per-tensor loops on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nlptransfer import TransferModel


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    params = list(TransferModel.from_backbone("minilm", ["a", "b"]).parameters())
    for param in params:
        param.grad = torch.randn_like(param) * 1e-3
    print(f"{sum(p.numel() for p in params):,} parameters, {torch.get_num_threads()} threads")
    kinds = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}
    for name, kwargs in kinds.items():
        optimizer = torch.optim.AdamW([{"params": params, "lr": 1e-4, "weight_decay": 0.01}], **kwargs)
        optimizer.step()  # state allocated outside the timing
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            optimizer.step()
            times.append(time.perf_counter() - start)
        print(f"{name}: {1000 * statistics.median(times):.1f} ms per step (median of {args.steps})")


if __name__ == "__main__":
    main()
