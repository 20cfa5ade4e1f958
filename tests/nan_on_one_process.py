"""Run a recipe whose loss becomes NaN on one process only (rank 1, its NAN_AT_CALL-th loss): the
other processes' losses stay finite, as when one shard holds a bad example.

    torchrun --nproc_per_node 2 tests/nan_on_one_process.py train --model ... --output_dir ...
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch

from nlptransfer.tasks.base import SingleLabelClassification

_loss = SingleLabelClassification.loss
_calls: list[int] = []


def _nan_on_rank_one(self: SingleLabelClassification, outputs: Any, targets: Any) -> torch.Tensor:
    loss = _loss(self, outputs, targets)
    _calls.append(1)
    if os.environ.get("RANK") == "1" and len(_calls) == int(os.environ["NAN_AT_CALL"]):
        return loss * float("nan")
    return loss


if __name__ == "__main__":
    from nlptransfer.cli import run_recipe

    SingleLabelClassification.loss = _nan_on_rank_one  # type: ignore[method-assign]
    sys.exit(run_recipe(sys.argv[1], sys.argv[2:]))
