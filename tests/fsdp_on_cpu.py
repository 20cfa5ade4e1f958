"""Run a recipe under accelerate's FSDP2 on CPU processes (gloo): the tests' stand-in for GPUs.

accelerate turns FSDP on only for accelerator devices (MULTI_GPU, MULTI_NPU, ...): with ``cpu=True``
its state stays MULTI_CPU and an FSDP config is ignored. torch's FSDP2 itself runs on CPU with gloo,
so this launcher (for tests only) switches the state to FSDP2 each time accelerate builds it, with
the fsdp_config of recipes/accelerate/fsdp.yaml (its bf16 aside) and a CPU device mesh, then runs
the recipe: the run's own code (sharded prepare, gradient clipping on DTensors, the gathered state
dict for saving) is what gets tested.

    torchrun --nproc_per_node 2 tests/fsdp_on_cpu.py train --model ... --output_dir ...

With PROBE_FILE set, the trained (still sharded) model's probabilities on PROBES are written there
(.npy) once training, evaluation and calibration are done, to compare with the saved model's; and
beside it (.units.json) the classes of the modules FSDP made units.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from accelerate.parallelism_config import ParallelismConfig
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

_init = AcceleratorState.__init__


def _fsdp_on_cpu(self: AcceleratorState, *args: object, **kwargs: object) -> None:
    # Each AcceleratorState() re-reads the process state (MULTI_CPU): switch after every one.
    _init(self, *args, **kwargs)
    if self.distributed_type != DistributedType.MULTI_CPU:
        return
    if getattr(self, "fsdp_plugin", None) is None:
        self.fsdp_plugin = FullyShardedDataParallelPlugin()  # reads the config's FSDP_* variables
        self.parallelism_config = ParallelismConfig(dp_shard_size=self.num_processes)
        self.device_mesh = self.parallelism_config.build_device_mesh("cpu")
    self.distributed_type = DistributedType.FSDP


CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "accelerate" / "fsdp.yaml"
PROBES = ["a great and happy film", "awful, boring and sad", "it was fine", "not good at all, terrible"]


def _probe(report: Any) -> Any:
    """``distributed_report`` (every process calls it with the final model), writing the probe first."""

    def wrapped(accelerator: Any, seen: list[int], num_train: int, model: Any = None) -> Any:
        probabilities = model.predict(PROBES).probabilities  # a forward pass on every process
        if accelerator.is_main_process:
            np.save(os.environ["PROBE_FILE"], probabilities)
            # fully_shard turns each unit's class into FSDP<class>: which modules became units.
            units = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.startswith("FSDP")})
            Path(os.environ["PROBE_FILE"]).with_suffix(".units.json").write_text(json.dumps(units))
        return report(accelerator, seen, num_train, model)

    return wrapped


def _use_fsdp_config(path: Path) -> None:
    """Set the FSDP_* variables `accelerate launch --config_file` sets from the config's fsdp_config."""
    config = yaml.safe_load(path.read_text())["fsdp_config"]
    for key, value in config.items():
        os.environ[key.upper()] = str(value).lower() if isinstance(value, bool) else str(value)


if __name__ == "__main__":
    import nlptransfer.runs.finetune
    from nlptransfer.cli import run_recipe

    if os.environ.get("PROBE_FILE"):
        finetune = nlptransfer.runs.finetune
        finetune.distributed_report = _probe(finetune.distributed_report)  # type: ignore[assignment]
    _use_fsdp_config(CONFIG)
    AcceleratorState.__init__ = _fsdp_on_cpu  # type: ignore[method-assign]
    sys.exit(run_recipe(sys.argv[1], sys.argv[2:]))
