"""Print Markdown tables of finished runs from their results.json files, with their machine and commit.

    python scripts/summarize_runs.py runs/*                 # one row per run
    python scripts/summarize_runs.py --detail runs/movie-reviews-minilm-feature-extraction

A folder without results.json is skipped (a compare or vision-demo folder: pass its runs/*). Wall
time (from the run's process start), peak RSS and the 1-minute load average at the end are what
the run recorded itself; runs of older releases did not record them and show "not recorded".
CPU cores used on average (CPU seconds over wall seconds) well below the run's torch threads means
other work shared the cores during the run; the load averages (1, 5, 15 minutes) at its end say
how busy the machine was then.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

NOT_RECORDED = "not recorded"


def _num(value: float | None, spec: str) -> str:
    return NOT_RECORDED if value is None else format(value, spec)


def what(results: dict[str, Any]) -> str:
    config = results["config"]
    scope = "all layers" if config.get("unfreeze_layers") is None else f"top {config['unfreeze_layers']}"
    return results["strategy"] if results["strategy"] != "finetune" else f"finetune ({scope})"


def row(folder: Path, results: dict[str, Any]) -> str:
    test = results.get("test") or {}
    validation = results["validation"].get("accuracy", float("nan"))
    load = (results.get("hardware") or {}).get("load_average_1min")
    return (
        f"| {folder.name} | {what(results)} | {results['model']} | {results['num_train_examples']:,} "
        f"| {results['epochs_run']} | {test.get('accuracy', float('nan')):.4f} "
        f"| {test.get('f1_macro', float('nan')):.4f} | {validation:.4f} "
        f"| {results['train_seconds']:.0f} | {_num(results.get('wall_seconds'), '.0f')} "
        f"| {_num(results.get('peak_rss_mb'), ',.0f')} | {_num(load, '.2f')} "
        f"| {results['trainable_parameters']:,} |"
    )


def detail(folder: Path, results: dict[str, Any]) -> str:
    """One run as a metric | value table (what docs/results.md shows for each command)."""
    test = results.get("test") or {}
    validation = results.get("validation") or {}
    lines = [f"### {folder}", "", "| metric | value |", "|---|---|"]
    for name in ("accuracy", "f1_macro"):
        if name in test:
            lines.append(f"| test {name.replace('_', ' ')} | {test[name]:.4f} |")
    if "accuracy" in validation:
        lines.append(
            f"| validation accuracy (best epoch, {results['best_epoch']}) | {validation['accuracy']:.4f} |"
        )
    lines.append(f"| epochs run | {results['epochs_run']} |")
    hits = (results.get("feature_cache") or {}).get("hits") or {}
    if results.get("feature_extraction_seconds"):
        cached = " (read from the feature cache)" if hits and all(hits.values()) else ""
        lines.append(f"| feature extraction seconds{cached} | {results['feature_extraction_seconds']:.1f} |")
    lines.append(f"| `train_seconds` | {results['train_seconds']:.1f} |")
    lines.append(
        f"| wall seconds (from the {results.get('wall_clock_from', 'process start')} to the end of the run) "
        f"| {_num(results.get('wall_seconds'), '.1f')} |"
    )
    lines.append(f"| peak RSS (MB) | {_num(results.get('peak_rss_mb'), ',.0f')} |")
    lines.append(f"| CPU cores used on average (CPU seconds / wall seconds) | {cores_used(results)} |")
    machine = results.get("hardware") or {}
    loads = [machine.get(f"load_average_{m}min") for m in (1, 5, 15)]
    lines.append(
        f"| load average (1 / 5 / 15 min) at the end | {' / '.join(_num(x, '.2f') for x in loads)} |"
    )
    lines.append(
        f"| trainable / total parameters | {results['trainable_parameters']:,} / "
        f"{results['total_parameters']:,} |"
    )
    return "\n".join(lines)


def cores_used(results: dict[str, Any]) -> str:
    cpu, wall = results.get("cpu_seconds"), results.get("wall_seconds")
    return NOT_RECORDED if cpu is None or not wall else f"{cpu / wall:.2f}"


def machine(results: dict[str, Any]) -> str:
    m = results.get("hardware") or {}
    if "cpu_count" not in m:
        where = f"{m.get('device', '?')}, {m.get('num_processes', '?')} process(es)"
        return f"{where}; CPU and memory {NOT_RECORDED}"
    memory = f", {m['memory_gb']:g} GB RAM" if m.get("memory_gb") else ""
    return (
        f"{m['cpu_count']} × {m['cpu']}{memory}; {m['device']}, {m['num_processes']} process(es), "
        f"{m.get('torch_threads', '?')} torch threads"
    )


def source(results: dict[str, Any]) -> str:
    found = results.get("source")
    if not found:
        return f"commit {NOT_RECORDED}"
    edits = f" with uncommitted changes to {', '.join(found['modified'])}" if found["modified"] else ""
    return f"commit `{found['commit'][:12]}`{edits}"


def software(results: dict[str, Any]) -> str:
    v = results.get("versions") or {}
    keys = ("python", "torch", "transformers", "accelerate", "peft", "nlptransfer")
    return ", ".join(f"{k} {v[k]}" for k in keys if k in v)


def provenance(runs: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    """One line per distinct machine, commit and software: which runs it holds, and when they ended."""
    groups: dict[str, list[tuple[Path, dict[str, Any]]]] = defaultdict(list)
    for folder, results in runs:
        groups[f"{machine(results)}; {source(results)}; {software(results)}"].append((folder, results))
    lines = []
    for key, members in groups.items():
        dates = sorted(r["finished_at"][:16].replace("T", " ") for _, r in members if r.get("finished_at"))
        when = f", finished {dates[0]} to {dates[-1]}" if dates else ""
        names = ", ".join(folder.name for folder, _ in members)
        lines.append(f"- {key}{when}: {names}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="Run output folders.")
    parser.add_argument("--detail", action="store_true", help="One metric | value table per run.")
    args = parser.parse_args()
    runs = [
        (f, json.loads((f / "results.json").read_text())) for f in args.runs if (f / "results.json").is_file()
    ]
    if args.detail:
        for folder, results in runs:
            print(detail(folder, results), end="\n\n")
    else:
        print(
            "| run | strategy | model | train examples | epochs | test accuracy | test macro-F1 "
            "| validation accuracy | train seconds | wall seconds | peak RSS (MB) | load (1 min) "
            "| trainable parameters |"
        )
        print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for folder, results in runs:
            print(row(folder, results))
        print()
    print("Machine, commit and software of these runs (from their results.json):")
    print("\n".join(provenance(runs)))


if __name__ == "__main__":
    main()
