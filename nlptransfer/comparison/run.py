"""``nlptransfer compare``: measure the data, run the sweep, write the report."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from nlptransfer.advisor import measure
from nlptransfer.comparison.report import write_report
from nlptransfer.comparison.sweep import CompareConfig, advisor_picks, check_arms, run_sweep, sweep_data


def run_comparison(config: CompareConfig) -> Path:
    """Run (or resume) the sweep, then write the report; returns the report's path.

    The report and ``run.json`` record this command's wall time (from the process start), its peak
    RSS, the machine with its load average at the end, and the nlptransfer commit.
    """
    out = Path(config.output_dir or "runs/compare")
    out.mkdir(parents=True, exist_ok=True)
    run, data = sweep_data(config)
    check_arms(config, run, data)
    measured = measure(run, config.familiarity_examples, config.probe_steps, data)
    (out / "measurements.json").write_text(json.dumps(measured.to_dict(), indent=2))
    picks = advisor_picks(config, run, measured)
    if config.advice_file:
        advice = {name: pick.to_dict() for name, pick in picks.items()}
        Path(config.advice_file).write_text(json.dumps({**measured.to_dict(), "picks": advice}, indent=2))
    cells = run_sweep(config, run, measured, out)
    (out / "cells.json").write_text(json.dumps([dataclasses.asdict(c) for c in cells], indent=2))
    return write_report(out, config, measured, picks, cells)
