"""results.json (finetune, pretrain) and compare's report record their own wall time, peak RSS,
machine, load average and commit, so the docs' timing and memory figures come from the run."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, recipe, run_script, sentiment_frame

from nlptransfer.cli import main
from nlptransfer.runs import outputs
from nlptransfer.runs.modelcard import run_details
from nlptransfer.runs.pretrain import PretrainConfig, pretrain


def _children_peak_mb() -> float:
    # ru_maxrss of RUSAGE_CHILDREN: the largest peak of any child waited for so far (KiB on Linux).
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (peak if sys.platform == "darwin" else peak * 1024) / 1e6


def _head_commit() -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def test_process_start_is_before_now_and_counts_the_interpreter_start() -> None:
    started, clock = outputs.process_start()
    now = time.time()
    assert started <= now
    if Path("/proc/self/stat").exists():
        assert clock == "process start"
        # This test process started before nlptransfer.runs.outputs was imported.
        assert started <= outputs._IMPORTED_AT + 0.05
    usage = outputs.resource_usage(run_start=now - 1.0)
    assert usage["wall_seconds"] >= usage["run_wall_seconds"] - 0.05 >= 0.9


def test_process_start_falls_back_to_the_import_time_without_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    real = Path.read_text

    def no_proc(self: Path, *args, **kwargs):
        if str(self).startswith("/proc/"):
            raise FileNotFoundError(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", no_proc)
    assert outputs.process_start() == (outputs._IMPORTED_AT, "nlptransfer import")


def test_peak_rss_units_kib_on_linux_bytes_on_macos(monkeypatch: pytest.MonkeyPatch) -> None:
    class Usage:
        ru_maxrss = 2_000_000

    monkeypatch.setattr(resource, "getrusage", lambda who: Usage())
    monkeypatch.setattr(sys, "platform", "linux")
    assert outputs.peak_rss_mb() == pytest.approx(2_000_000 * 1024 / 1e6, abs=0.1)  # KiB
    monkeypatch.setattr(sys, "platform", "darwin")
    assert outputs.peak_rss_mb() == pytest.approx(2.0, abs=0.1)  # bytes


def test_peak_rss_sees_a_large_allocation() -> None:
    import numpy as np

    block = np.ones(300_000_000 // 8)  # 300 MB, touched
    assert outputs.peak_rss_mb() >= 300
    del block


def test_hardware_records_the_machine_and_the_load_average() -> None:
    machine = outputs.hardware()
    assert machine["cpu_count"] == os.cpu_count()
    assert machine["cpu"] and machine["platform"]
    if hasattr(os, "getloadavg"):
        assert machine["load_average_1min"] == pytest.approx(os.getloadavg()[0], abs=5)


def test_source_commit_is_the_checkouts_head() -> None:
    head = _head_commit()
    if head is None:
        pytest.skip("not a git checkout")
    source = outputs.source_commit()
    assert source is not None and source["commit"] == head
    assert all(path.startswith(("nlptransfer/", "recipes/", "scripts/")) for path in source["modified"])


def test_source_commit_is_none_outside_a_checkout(tmp_path: Path) -> None:
    assert outputs.source_commit(tmp_path / "nlptransfer") is None


def test_finetune_results_record_wall_time_peak_rss_load_and_commit(tiny_bert: str, tmp_path: Path) -> None:
    sentiment_frame(60).to_csv(tmp_path / "train.csv", index=False)
    out = tmp_path / "out"
    args = ["--model", tiny_bert, "--train_file", str(tmp_path / "train.csv"), "--output_dir", str(out),
            "--epochs", "1"]  # fmt: skip
    before = time.time()
    result = run_script(recipe(*args))
    elapsed = time.time() - before
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    # From the process start: more than the run itself (imports), less than the command seen outside.
    assert results["wall_clock_from"] in ("process start", "nlptransfer import")
    assert results["train_seconds"] <= results["run_wall_seconds"] < results["wall_seconds"] <= elapsed + 0.05
    # Peak RSS of the recipe's own process: more than torch takes to import, at most any child's peak.
    assert 100 < results["peak_rss_mb"] <= _children_peak_mb() + 1
    # CPU time of the process: some, and at most all cores for the whole wall time.
    assert 0 < results["cpu_seconds"] <= results["wall_seconds"] * os.cpu_count() + 1
    machine = results["hardware"]
    assert machine["cpu_count"] == os.cpu_count() and machine["num_processes"] == "1"
    assert isinstance(machine["load_average_1min"], float)
    assert isinstance(machine["load_average_15min"], float)
    head = _head_commit()
    if head is not None:
        assert results["source"]["commit"] == head
    card = (out / "README.md").read_text()
    assert f"- **Wall time**: {results['wall_seconds']:.0f} s from the " in card
    assert f"peak RSS {results['peak_rss_mb']:,.0f} MB" in card and "load average" in card
    if head is not None:
        assert f"commit `{head[:12]}`" in card


def test_pretrain_results_record_wall_time_and_peak_rss(tiny_bert: str, tmp_path: Path) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(sentiment_frame(60)["text"]) + "\n")
    config = PretrainConfig(model=tiny_bert, train_file=str(texts), output_dir=str(tmp_path / "lm"), epochs=1,
                            batch_size=8, heldout_split=0.1, save_steps=0)  # fmt: skip
    results = pretrain(config)
    saved = json.loads((tmp_path / "lm" / "results.json").read_text())
    assert saved["wall_seconds"] == results["wall_seconds"] >= results["run_wall_seconds"] > 0
    assert saved["peak_rss_mb"] > 100 and "load_average_1min" in saved["hardware"]
    assert "- **Wall time**:" in (tmp_path / "lm" / "README.md").read_text()


def test_card_lines_without_the_new_fields_still_render() -> None:
    # results.json of earlier releases has no wall time, commit or machine details.
    details = run_details({"hardware": {"device": "cpu", "num_processes": "1"}})
    assert details == {"Hardware": "cpu, 1 process(es)"}


def test_compare_records_its_wall_time_peak_rss_and_reused_runs(tiny_bert: str, tmp_path: Path) -> None:
    sentiment_frame(80).to_csv(tmp_path / "train.csv", index=False)
    out = tmp_path / "compare"
    argv = ["compare", "--model", tiny_bert, "--train_file", str(tmp_path / "train.csv"), "--output_dir",
            str(out), "--arms", "feature-extraction", "--budgets", "4", "--seeds", "0", "--batch_size", "8",
            "--min_steps", "2", "--probe_steps", "1", "--familiarity_examples", "10"]  # fmt: skip
    assert main(argv) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["wall_seconds"] > 0 and run["peak_rss_mb"] > 100
    assert (run["runs"], run["runs_reused"]) == (1, 0)
    assert "load_average_1min" in run["hardware"] and "cpu_count" in run["hardware"]
    report = (out / "report.md").read_text()
    assert f"{run['wall_seconds'] / 60:.1f} min wall time from the " in report
    assert f"peak RSS {run['peak_rss_mb']} MB" in report and "All 1 runs ran in it." in report
    assert run["cpu_seconds"] > 0 and "CPU cores used on average" in report
    assert json.loads((out / "cells.json").read_text())[0]["reused"] is False

    assert main(argv) == 0  # the same command again reuses the finished run, and says so
    again = json.loads((out / "run.json").read_text())
    assert again["runs_reused"] == 1
    assert "1 of the 1 runs were reused" in (out / "report.md").read_text()
    assert json.loads((out / "cells.json").read_text())[0]["reused"] is True
