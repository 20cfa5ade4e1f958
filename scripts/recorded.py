"""Run a command and print, after its output, its wall time, peak RSS, the load, machine and commit.

    python scripts/recorded.py -- nlptransfer advise
    python scripts/recorded.py -- python scripts/vision_demo.py

For commands that write no results.json of their own (``nlptransfer advise``) and for scripts that
run many trainings (the vision demo), this is how a doc's figure gets its machine, date, commit and
load beside it. Peak RSS is that of the largest single process the command ran (``ru_maxrss`` of
the children), not a sum over processes. The command's exit code is this script's.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def children_peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round((peak if sys.platform == "darwin" else peak * 1024) / 1e6, 1)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="The command, after --.")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give a command after --")
    load_before = round(os.getloadavg()[0], 2)
    started = time.time()
    # Nothing large is imported before this: a child's ru_maxrss starts at its parent's RSS at the fork.
    code = subprocess.run(command, check=False).returncode
    wall = time.time() - started
    load_after = round(os.getloadavg()[0], 2)
    peak = children_peak_rss_mb()
    sys.path.insert(0, str(REPO))
    from nlptransfer.runs.outputs import cpu_name, memory_gb, source_commit

    source = source_commit()
    if source:
        edits = f" with uncommitted changes to {', '.join(source['modified'])}" if source["modified"] else ""
        commit = f"{source['commit'][:12]}{edits}"
    else:
        commit = "not known"
    print(
        f"\n[recorded] $ {shlex.join(command)}\n"
        f"[recorded] exit code {code}; wall time {wall:.1f} s; peak RSS of its largest process "
        f"{peak:,.0f} MB\n"
        f"[recorded] load average (1 min) {load_before} at the start, {load_after} at the end\n"
        f"[recorded] machine: {os.cpu_count()} × {cpu_name()}, {memory_gb()} GB RAM; "
        f"nlptransfer commit {commit}; finished {time.strftime('%Y-%m-%d %H:%M %z')}",
        flush=True,
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
