"""FSDP2, on two CPU processes (gloo): the run's own code with sharded parameters.

accelerate runs FSDP only on accelerator devices, so tests/fsdp_on_cpu.py switches its state to
FSDP2 on CPU (what recipes/accelerate/fsdp.yaml asks for on GPUs: full shard, one unit per body
block, full state dict). Under it, training, evaluation, calibration, the best-epoch snapshot,
checkpoints, resuming and the saved model all run on DTensor shards; the saved model must give the
very outputs the sharded model gave, and training must match data parallelism.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, run_script, torchrun
from safetensors.torch import load_file
from test_resume import _command, _flags, _start, _wait_for_checkpoint

from nlptransfer.model.transfer import TransferModel

sys.path.insert(0, str(Path(__file__).parent))
from fsdp_on_cpu import PROBES


def _fsdp(flags: list[str]) -> list[str]:
    return [*torchrun(2), str(REPO / "tests" / "fsdp_on_cpu.py"), "train", *flags]


def _run(command: list[str], probe: Path | None = None) -> None:
    with pytest.MonkeyPatch.context() as patch:
        if probe is not None:
            patch.setenv("PROBE_FILE", str(probe))
        done = run_script(command)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.fixture(scope="module")
def data(split_data: Path) -> Path:
    return split_data


@pytest.fixture(scope="module")
def fsdp_run(tiny_bert: str, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fsdp") / "run"
    _run(_fsdp(_flags(tiny_bert, data, out, "finetune")), probe=out.parent / "probe.npy")
    return out


def _reloaded_outputs_equal(out: Path) -> None:
    saved = TransferModel.from_pretrained(out).predict(PROBES).probabilities
    np.testing.assert_array_equal(saved, np.load(out.parent / "probe.npy"))


def test_a_model_trained_under_fsdp_saves_and_reloads_with_identical_outputs(fsdp_run: Path) -> None:
    report = json.loads((fsdp_run / "results.json").read_text())["distributed"]
    assert report["distributed_type"] == "DistributedType.FSDP" and report["parameters_sharded"] is True
    # Each process its own half (accelerate repeats a few examples to even out the last batches).
    assert report["train_examples_covered"] == report["num_train_examples"] == 180
    assert all(90 <= n <= 94 for n in report["train_examples_per_process"])
    _reloaded_outputs_equal(fsdp_run)  # calibrated probabilities, bitwise
    # Each body block its own unit (the backbone's block class), the whole model the root unit.
    units = json.loads((fsdp_run.parent / "probe.units.json").read_text())
    assert units == ["FSDPBertLayer", "FSDPTransferModel"]


def test_fsdp_trains_the_model_data_parallelism_trains(
    fsdp_run: Path, tiny_bert: str, data: Path, tmp_path: Path
) -> None:
    ddp = tmp_path / "ddp"
    _run(_command("finetune", _flags(tiny_bert, data, ddp, "finetune"), processes=2))
    sharded, replicated = (load_file(str(out / "model.safetensors")) for out in (fsdp_run, ddp))
    source = load_file(str(Path(tiny_bert) / "model.safetensors"))
    assert sharded.keys() == replicated.keys()
    body = {name.removeprefix("backbone.model."): name for name in sharded}
    assert any(not torch.equal(sharded[body[k]], source[k]) for k in source)  # the body did train
    for name in sharded:
        # Reduce-scatter and all-reduce sum the same two gradients: equal up to rounding.
        torch.testing.assert_close(sharded[name], replicated[name], rtol=0, atol=1e-6, msg=name)


def test_lora_under_fsdp_saves_the_gathered_adapter(tiny_bert: str, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    flags = [*_flags(tiny_bert, data, out, "finetune"), "--strategy", "lora"]
    _run(_fsdp(flags), probe=tmp_path / "probe.npy")
    assert (out / "backbone" / "adapter" / "adapter_model.safetensors").is_file()
    _reloaded_outputs_equal(out)


def test_a_killed_fsdp_run_resumes_to_the_uninterrupted_one(
    fsdp_run: Path, tiny_bert: str, data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    flags = _flags(tiny_bert, data, out, "finetune")
    process = _start(_fsdp(flags))
    _wait_for_checkpoint(process, out, 10)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    _run(_fsdp([*flags, "--resume_from_checkpoint", "latest"]))
    resumed, uninterrupted = (load_file(str(run / "model.safetensors")) for run in (out, fsdp_run))
    for name in uninterrupted:
        assert torch.equal(resumed[name], uninterrupted[name]), name
