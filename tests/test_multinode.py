"""Two machines, simulated on one: two torchrun node ranks on 127.0.0.1 with one process each
(gloo), through the same recipe. They must train as one machine with two processes does: each
rank its own shard, the same weights on both, and a killed run resuming to the uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, free_port, run_script
from safetensors.torch import load_file
from test_resume import (
    RESULT_KEYS,
    _command,
    _flags,
    _same_results,
    _same_weights,
    _start,
    _wait_for_checkpoint,
)


def _two_nodes(flags: list[str]) -> list[list[str]]:
    """The command of each of the two node ranks (what each machine runs in a real launch)."""
    port = str(free_port())
    return [
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
         "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", port,
         str(REPO / "recipes" / "finetune.py"), *flags]
        for rank in (0, 1)
    ]  # fmt: skip


def _finish(processes: list[subprocess.Popen], timeout: float = 600) -> None:
    for process in processes:
        _, stderr = process.communicate(timeout=timeout)
        assert process.returncode == 0, stderr[-3000:]


@pytest.fixture(scope="module")
def data(split_data: Path) -> Path:
    return split_data


@pytest.fixture(scope="module")
def two_nodes(tiny_bert: str, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run on two simulated machines."""
    out = tmp_path_factory.mktemp("two-nodes") / "run"
    _finish([_start(command) for command in _two_nodes(_flags(tiny_bert, data, out, "finetune"))])
    return out


@pytest.fixture(scope="module")
def one_machine(tiny_bert: str, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run on one machine with two processes."""
    out = tmp_path_factory.mktemp("one-machine") / "run"
    done = run_script(_command("finetune", _flags(tiny_bert, data, out, "finetune"), processes=2))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_two_nodes_shard_the_data_and_train_the_same_model_as_one_machine(
    two_nodes: Path, one_machine: Path
) -> None:
    out = two_nodes
    report = json.loads((out / "results.json").read_text())["distributed"]
    assert report["num_processes"] == 2 and "MULTI_CPU" in report["distributed_type"]
    assert report["weights_identical_across_processes"] is True
    assert all(n > 0 for n in report["train_examples_per_process"])
    assert report["examples_seen_by_several_processes"] <= 4  # one padding batch at most
    assert report["train_examples_covered"] == report["num_train_examples"]
    # Same world size, ranks and shards as one machine with 2 processes: the same model, up to the
    # rounding of gloo's all-reduce, which sums in another order across machines.
    results = [json.loads((run / "results.json").read_text()) for run in (one_machine, out)]
    assert results[0]["test"] == results[1]["test"] and results[0]["best_epoch"] == results[1]["best_epoch"]
    left, right = (load_file(str(run / "model.safetensors")) for run in (one_machine, out))
    assert left.keys() == right.keys()
    for name in left:
        assert torch.allclose(left[name], right[name], atol=1e-5), name


def test_two_nodes_killed_mid_run_resume_to_the_uninterrupted_result(
    tiny_bert: str, data: Path, two_nodes: Path, tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    flags = _flags(tiny_bert, data, out, "finetune")
    nodes = [_start(command) for command in _two_nodes(flags)]
    _wait_for_checkpoint(nodes[0], out, 10)
    for node in nodes:  # a machine lost: every process of both launches dies at once
        os.killpg(node.pid, signal.SIGKILL)
        node.wait()
    _finish([_start(command) for command in _two_nodes([*flags, "--resume_from_checkpoint", "latest"])])
    _same_results(two_nodes, out, RESULT_KEYS["finetune"])
    _same_weights(two_nodes / "model.safetensors", out / "model.safetensors")
