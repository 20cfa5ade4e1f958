"""What ``nlptransfer tune`` writes: every trial in a table (Markdown and CSV), a plot of the
trials, and the best trial's options and the command that reruns it."""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from nlptransfer.config import FinetuneConfig
from nlptransfer.files import atomic_write_text

logger = logging.getLogger(__name__)

REPORT, TABLE, PLOT, BEST = "tune_report.md", "trials.csv", "trials.png", "best.json"


def write_report(
    out: Path, rows: list[Any], best: dict[str, Any] | None, metric: str, searched: list[str],
    base: FinetuneConfig,
) -> Path:  # fmt: skip
    """Write the report files into ``out``; return the Markdown report's path."""
    _write_csv(out / TABLE, rows, searched)
    plotted = _plot(out / PLOT, rows, metric)
    if best is not None:
        atomic_write_text(out / BEST, json.dumps(best, indent=2, default=str))
    data = Path(base.train_file).name if base.train_file else base.dataset
    lines = [
        f"# Hyperparameter search: `{base.strategy}` on {data}",
        "",
        f"- **Searched:** {', '.join(f'`{name}`' for name in searched)}; every other option as given.",
        f"- **Compared by:** validation `{metric}` (of the best epoch of each trial).",
        f"- **Trials:** {len(rows)} ({_count(rows, 'complete')} complete, {_count(rows, 'pruned')} pruned, "
        f"{_count(rows, 'fail')} failed).",
    ]
    if best is not None:
        lines += [f"- **Best:** trial {best['trial']}, {metric} {best['value']:.4f}; its model is in "
                  f"`{best['model']}`.", "", "Rerun it with:", "", f"    {best['command']}"]  # fmt: skip
    lines += ["", "| trial | state | " + " | ".join(searched) + f" | {metric} | epochs | seconds | note |",
              "|---" * (len(searched) + 6) + "|"]  # fmt: skip
    for row in rows:
        values = " | ".join(_shown(row.params.get(name)) for name in searched)
        score = f"{row.value:.4f}" if row.value is not None else ""
        lines.append(f"| {row.number} | {row.state} | {values} | {score} | {row.epochs_run or ''} | "
                     f"{row.seconds:.1f} | {row.note} |")  # fmt: skip
    if plotted:
        lines += ["", f"![trials]({PLOT})"]
    report = out / REPORT
    atomic_write_text(report, "\n".join(lines) + "\n")
    logger.info("tune: report in %s", report)
    return report


def _count(rows: list[Any], state: str) -> int:
    return sum(r.state == state for r in rows)


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value)


def _write_csv(path: Path, rows: list[Any], searched: list[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial", "state", *searched, "value", "epochs_run", "seconds", "note"])
        for row in rows:
            record = asdict(row)
            writer.writerow([row.number, row.state, *(row.params.get(n) for n in searched), record["value"],
                             row.epochs_run, row.seconds, row.note])  # fmt: skip


def _plot(path: Path, rows: list[Any], metric: str) -> bool:
    """Each complete trial's score, the best so far as a line; pruned trials as crosses."""
    complete = [r for r in rows if r.value is not None]
    if not complete:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.scatter([r.number for r in complete], [r.value for r in complete], label="complete trial")
    pruned = [r.number for r in rows if r.state == "pruned"]
    if pruned:
        low = min(r.value for r in complete)
        ax.scatter(
            pruned, [low] * len(pruned), marker="x", color="grey", label="pruned (plotted at the lowest)"
        )
    best, line = None, []
    for r in complete:
        best = r.value if best is None else max(best, r.value) if _higher(metric) else min(best, r.value)
        line.append((r.number, best))
    ax.step([n for n, _ in line], [v for _, v in line], where="post", color="C1", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {metric}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _higher(metric: str) -> bool:
    from nlptransfer.tasks.metrics import greater_is_better

    return greater_is_better(metric)
