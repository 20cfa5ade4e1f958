"""The comparison report: Markdown tables and one figure (learning curves, time, parameters)."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from nlptransfer.advisor import Measurements, Recommendation
from nlptransfer.advisor.auto import AUTO
from nlptransfer.comparison.sweep import ALL, Cell, CompareConfig, budget_name, summarise
from nlptransfer.runs.modelcard import command_line
from nlptransfer.runs.outputs import hardware, resource_usage, source_commit, versions

# The advisor's pick is "right" at a budget when it scores within this many points of the best arm.
TOLERANCE_POINTS = 1.0
SOFTWARE = ("python", "torch", "transformers", "peft", "nlptransfer")


def write_report(
    out: Path,
    config: CompareConfig,
    measured: Measurements,
    picks: dict[str, Recommendation],
    cells: list[Cell],
) -> Path:
    stats = summarise(cells)
    metric = cells[0].metric if cells else "accuracy"
    budgets = [budget_name(k) for k in config.budget_values()]
    figure = out / "compare.png"
    plot(stats, budgets, config.arms, picks, figure)
    run = command_usage(cells)
    (out / "run.json").write_text(json.dumps(run, indent=2))
    text = "\n".join([
        "# Strategy comparison",
        "",
        _setup(config, measured, cells, run),
        "",
        f"## Test {metric}",
        "",
        "Mean ± std over seeds; ★ marks the advisor's pick at each budget, **bold** the best arm.",
        "",
        accuracy_table(stats, budgets, config.arms, picks),
        "",
        "## The advisor's pick against the measured best",
        "",
        advisor_table(stats, budgets, picks, metric),
        "",
        *_auto_section(stats, budgets, cells, metric),
        f"![learning curves, {metric} vs training time, trainable parameters]({figure.name})",
        "",
        "## Cost",
        "",
        cost_table(stats, budgets, config.arms),
        "",
    ])  # fmt: skip
    report = out / "report.md"
    report.write_text(text)
    return report


def command_usage(cells: list[Cell]) -> dict[str, Any]:
    """What this ``compare`` command cost: wall time from the process start and peak RSS (up to the
    report), the machine (with its load average now), the commit, and how many runs it reused."""
    return {
        **resource_usage(),
        "runs": len(cells),
        "runs_reused": sum(cell.reused for cell in cells),
        "hardware": hardware(),
        "source": source_commit(),
        "versions": versions(),
    }


def usage_lines(run: dict[str, Any]) -> list[str]:
    """The report's lines on the machine, the cost of this command and its commit."""
    machine = run["hardware"]
    memory = f", {machine['memory_gb']:g} GB RAM" if machine.get("memory_gb") else ""
    load = machine.get("load_average_1min")
    busy = ""
    if load is not None and machine.get("cpu_count") and load > machine["cpu_count"]:
        busy = " (more runnable processes than cores: other work shared the machine, times are inflated)"
    rss = run.get("peak_rss_mb")
    reused = (
        f" {run['runs_reused']} of the {run['runs']} runs were reused from an earlier invocation, so "
        "their time is not in it."
        if run["runs_reused"]
        else f" All {run['runs']} runs ran in it."
    )
    source = run.get("source")
    if source:
        edits = f", with uncommitted changes to {', '.join(source['modified'])}" if source["modified"] else ""
        commit = f"`{source['commit'][:12]}`{edits}"
    else:
        commit = "not known (not a git checkout)"
    return [
        f"- **Machine:** {machine['cpu_count']} × {machine['cpu']}{memory}, {machine['device']}; "
        f"load average (1 / 5 / 15 min) at the end: {load if load is not None else 'not known'} / "
        f"{machine.get('load_average_5min')} / {machine.get('load_average_15min')}{busy}.",
        f"- **This command:** {run['wall_seconds'] / 60:.1f} min wall time from the "
        f"{run['wall_clock_from']}, peak RSS {rss if rss is not None else 'not known'} MB, "
        f"{_cores(run)} CPU cores used on average (CPU time / wall time), finished {run['finished_at']}."
        f"{reused}",
        f"- **nlptransfer commit:** {commit}.",
    ]


def _cores(run: dict[str, Any]) -> str:
    cpu, wall = run.get("cpu_seconds"), run.get("wall_seconds")
    return "not known" if cpu is None or not wall else f"{cpu / wall:.2f}"


def _setup(config: CompareConfig, measured: Measurements, cells: list[Cell], run: dict[str, Any]) -> str:
    p, f, c = measured.profile, measured.familiarity, measured.compute
    data = config.train_file or f"built-in `{config.dataset}`"
    labels = ", ".join(f"{k}: {v}" for k, v in p.per_label.items())
    signals = ", ".join(f"{k} {v:g}" for k, v in f.signals.items()) or "no signal"
    validation = (
        "as many examples per label as training ones"
        if config.validation_protocol == "k"
        else "the whole validation split"
    )
    software = ", ".join(f"{k} {v}" for k, v in versions().items() if k in SOFTWARE)
    total = sum(cell.train_seconds for cell in cells)
    return "\n".join([
        f"- **Data:** {data}: {p.num_train} training examples ({labels}), {p.num_validation} validation, "
        f"{p.num_test} test.",
        f"- **Model:** `{config.model}`. Familiarity of the text: **{f.verdict}** ({signals}).",
        f"- **Validation:** {validation} (the 'all' budget: the whole split). Budgets of "
        f"{config.one_seed_from} or more per label run one seed.",
        f"- **Software:** {c.device}, {c.threads} threads, {platform.machine()}; {software}.",
        *usage_lines(run),
        f"- **Training time of all {len(cells)} runs:** {total / 60:.1f} min (sum of `train_seconds`).",
        f"- **Reproduce:** `{command_line(config, 'recipes/compare.py')}`",
    ])  # fmt: skip


def _best(stats: dict[tuple[str, str], dict[str, float]], budget: str) -> tuple[str, float] | None:
    scored = [(arm, s["mean"]) for (arm, b), s in stats.items() if b == budget]
    return max(scored, key=lambda x: x[1]) if scored else None


def accuracy_table(
    stats: dict[tuple[str, str], dict[str, float]], budgets: list[str], arms: list[str],
    picks: dict[str, Recommendation],
) -> str:  # fmt: skip
    header = "| arm | " + " | ".join(_budget_label(b) for b in budgets) + " |"
    lines = [header, "|---|" + "---|" * len(budgets)]
    for arm in arms:
        row = []
        for budget in budgets:
            s = stats.get((arm, budget))
            if s is None:
                row.append("—")
                continue
            cell = f"{s['mean']:.4f} ± {s['std']:.4f}" if s["seeds"] > 1 else f"{s['mean']:.4f}"
            best = _best(stats, budget)
            if best and best[0] == arm:
                cell = f"**{cell}**"
            if picks.get(budget) and picks[budget].arm == arm:
                cell += " ★"
            row.append(cell)
        lines.append(f"| {arm} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def advisor_table(
    stats: dict[tuple[str, str], dict[str, float]], budgets: list[str], picks: dict[str, Recommendation],
    metric: str = "accuracy",
) -> str:  # fmt: skip
    columns = ["budget", "advisor's pick", f"its {metric}", "measured best", f"best {metric}", "gap (points)",
               f"within {TOLERANCE_POINTS:g} point"]  # fmt: skip
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    hits = counted = 0
    for budget in budgets:
        pick, best = picks.get(budget), _best(stats, budget)
        if pick is None or best is None:
            continue
        mine = stats.get((pick.arm, budget))
        label, best_arm, best_acc = _budget_label(budget), best[0], f"{best[1]:.4f}"
        if mine is None:
            row = [label, f"{pick.arm} (not compared)", "—", best_arm, best_acc, "—", "—"]
        else:
            gap = 100 * (best[1] - mine["mean"])
            ok = gap <= TOLERANCE_POINTS
            hits, counted = hits + ok, counted + 1
            row = [
                label,
                pick.arm,
                f"{mine['mean']:.4f}",
                best_arm,
                best_acc,
                f"{gap:.2f}",
                "yes" if ok else "no",
            ]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(f"Within {TOLERANCE_POINTS:g} point of the best at **{hits} of {counted}** budgets.")
    for budget in budgets:
        if budget in picks and picks[budget].reasons:
            reasons = "; ".join(r.rstrip(".") for r in picks[budget].reasons)
            lines.append(f"- {_budget_label(budget)} → {picks[budget].arm}: {reasons}.")
    return "\n".join(lines)


def _auto_section(
    stats: dict[tuple[str, str], dict[str, float]], budgets: list[str], cells: list[Cell], metric: str
) -> list[str]:
    """When the `auto` arm ran: what it chose at each budget, against the measured best."""
    chosen = {c.budget: c.auto for c in cells if c.arm == AUTO}
    if not chosen:
        return []
    picks = {
        budget: Recommendation(AUTO, "", "", 0, None, {}, [f"`{flags}`"] if flags else [])
        for budget, flags in chosen.items()
    }
    table = advisor_table(stats, budgets, picks, metric)
    return ["## `--strategy auto` against the measured best", "", table, ""]


def cost_table(stats: dict[tuple[str, str], dict[str, float]], budgets: list[str], arms: list[str]) -> str:
    header = ["arm", "trainable parameters", *(f"train s, {_budget_label(b)}" for b in budgets)]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for arm in arms:
        known = [stats[(arm, b)] for b in budgets if (arm, b) in stats]
        trainable = f"{int(known[0]['trainable']):,}" if known else "—"
        secs = [f"{stats[(arm, b)]['seconds']:.0f}" if (arm, b) in stats else "—" for b in budgets]
        lines.append(f"| {arm} | {trainable} | " + " | ".join(secs) + " |")
    return "\n".join(lines)


def _budget_label(budget: str) -> str:
    return "all data" if budget == ALL else f"{budget} per label"


def plot(
    stats: dict[tuple[str, str], dict[str, float]], budgets: list[str], arms: list[str],
    picks: dict[str, Recommendation], path: Path,
) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, times, params) = plt.subplots(1, 3, figsize=(15, 4.2))
    for arm in arms:
        points = [(stats[(arm, b)], b) for b in budgets if (arm, b) in stats]
        if not points:
            continue
        xs = [s["num_train"] for s, _ in points]
        line = curves.errorbar(xs, [s["mean"] for s, _ in points], yerr=[s["std"] for s, _ in points],
                               marker="o", capsize=3, label=arm)  # fmt: skip
        color = line[0].get_color()
        times.scatter(
            [s["seconds"] for s, _ in points], [s["mean"] for s, _ in points], color=color, label=arm
        )
        for s, b in points:
            times.annotate(
                _budget_label(b).replace(" per label", "/label"), (s["seconds"], s["mean"]), fontsize=7
            )
            if picks.get(b) and picks[b].arm == arm:
                star = {"s": 260, "marker": "*", "color": color, "edgecolor": "black", "zorder": 5}
                curves.scatter([s["num_train"]], [s["mean"]], **star)
        params.bar(arm, points[0][0]["trainable"], color=color)
    curves.scatter([], [], s=120, marker="*", color="white", edgecolor="black", label="advisor's pick")
    curves.set(
        xscale="log", xlabel="labelled training examples", ylabel="test accuracy", title="Learning curves"
    )
    times.set(xscale="log", xlabel="training seconds (mean over seeds)", ylabel="test accuracy",
              title="Accuracy vs training time")  # fmt: skip
    params.set(yscale="log", ylabel="trainable parameters", title="Trainable parameters")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    for ax in (curves, times):
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    params.tick_params(axis="x", rotation=20)
    for ax in (curves, times):
        ax.grid(alpha=0.3)
    curves.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_cells(records: list[dict[str, Any]]) -> list[Cell]:
    return [Cell(**r) for r in records]
