"""CI and install scripts: CI builds from scratch and lints; installing torch never pulls a CUDA build."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

# A stand-in `python` that answers `-c "import torch"` and `-m pip install ...` as told by the
# environment, and records every pip call: the install script's decisions, without installing.
FAKE_PYTHON = """#!/usr/bin/env bash
if [[ "$1" == "-c" ]]; then
    [[ "$FAKE_TORCH" == "installed" ]] || exit 1
    echo "2.9.1+cu128"; exit 0
fi
echo "$*" >> "$FAKE_LOG"
for spec in $FAKE_PIP_FAILS; do [[ "$*" == *"$spec"* ]] && exit 1; done
exit 0
"""


def _install_torch(
    tmp_path: Path, torch: str, pip_fails: str = ""
) -> tuple[subprocess.CompletedProcess, list]:
    bin_dir, log = tmp_path / "bin", tmp_path / "pip.log"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    log.write_text("")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_TORCH": torch,
           "FAKE_PIP_FAILS": pip_fails, "FAKE_LOG": str(log)}  # fmt: skip
    done = subprocess.run(["bash", str(REPO / "scripts" / "install_torch.sh")], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    return done, log.read_text().splitlines()


def test_an_installed_torch_is_kept(tmp_path: Path) -> None:
    done, calls = _install_torch(tmp_path, torch="installed")
    assert done.returncode == 0 and calls == []
    assert "Keeping the installed torch 2.9.1+cu128" in done.stdout


def test_the_cpu_wheel_is_taken_by_its_label_first(tmp_path: Path) -> None:
    done, calls = _install_torch(tmp_path, torch="missing")
    assert done.returncode == 0
    assert calls == ["-m pip install --quiet torch==2.13.0+cpu"]


def test_without_the_label_it_uses_pytorchs_cpu_index(tmp_path: Path) -> None:
    done, calls = _install_torch(tmp_path, torch="missing", pip_fails="+cpu")
    assert done.returncode == 0
    assert (
        calls[-1] == "-m pip install --quiet torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
    )


def test_no_cpu_build_stops_with_the_fix_and_never_takes_a_plain_torch(tmp_path: Path) -> None:
    done, calls = _install_torch(tmp_path, torch="missing", pip_fails="torch")
    assert done.returncode == 1
    assert len(calls) == 2 and all("+cpu" in c or "whl/cpu" in c for c in calls)
    assert "CUDA" in done.stderr and "pip install torch --index-url" in done.stderr
    assert "run this script again" in done.stderr


def test_install_never_names_torch_without_the_cpu_build() -> None:
    """No line of the install scripts asks pip for a torch that could resolve to a CUDA build."""
    for script in ("install.sh", "install_torch.sh", "install_assets.sh"):
        for line in (REPO / "scripts" / script).read_text().splitlines():
            if "-m pip install" in line and re.search(r"\btorch\b", line):
                assert "+cpu" in line or "--index-url" in line, f"{script}: {line}"


def _readme_test_command() -> str:
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"^(python3 -m venv .*pytest.*)$", readme, flags=re.M)
    assert len(commands) == 1, commands
    return commands[0]


def test_ci_builds_a_fresh_venv_runs_readmes_test_command_and_lints() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    command = _readme_test_command()
    assert "python3 -m venv --clear .venv" in command  # an old venv can hide a missing install step
    lines = [line.strip() for line in ci.splitlines()]
    assert command in lines
    after = lines[lines.index(command) + 1 :]
    assert "ruff check ." in " ".join(after) and "ruff format --check ." in " ".join(after)
    assert "export CI=true" in lines[: lines.index(command)]  # missing offline assets fail, not skip


@pytest.mark.parametrize("script", ["install.sh", "install_torch.sh", "install_assets.sh"])
def test_install_scripts_stop_at_the_first_error(script: str) -> None:
    assert "set -euo pipefail" in (REPO / "scripts" / script).read_text()
