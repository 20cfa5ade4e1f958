"""Run every test that docs/reliability.md names, and count rows and tests that pass.

    HF_HUB_OFFLINE=1 python scripts/reliability.py            # every row, slow tests included
    HF_HUB_OFFLINE=1 python scripts/reliability.py --fast     # skip tests marked slow

A row counts as proven when at least one of its tests passed and none failed; a test may be
skipped where its optional dependency is missing (say so when quoting the figures).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reliability.md"
# `tests/test_x.py::test_name` (a parametrised test counts once per case).
TEST_REF = re.compile(r"`(tests/test_\w+\.py)::(\w+)`")


def doc_rows(doc: Path = DOC) -> list[tuple[str, list[tuple[str, str]]]]:
    """(row title, [(test file, test name)]) for each table row of the page that names tests."""
    rows = []
    for line in doc.read_text().splitlines():
        refs = TEST_REF.findall(line)
        if line.startswith("|") and refs:
            title = line.split("|")[2].strip()
            rows.append((title, refs))
    return rows


def _run(tests: list[tuple[str, str]], fast: bool) -> dict[tuple[str, str], list[str]]:
    """Outcomes of each named test (one per parametrised case), from a pytest JUnit report."""
    pattern = " or ".join(sorted({name for _, name in tests}))
    files = sorted({file for file, _ in tests})
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        command = [sys.executable, "-m", "pytest", *files, "-k", pattern, "-q", "-p", "no:cacheprovider",
                   f"--junitxml={report}", "-m", "not slow" if fast else ""]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        subprocess.run(command, cwd=REPO, env=env, check=False)
        outcomes: dict[tuple[str, str], list[str]] = {}
        for case in ET.parse(report).getroot().iter("testcase"):
            # classname is tests.test_x, or tests.test_x.TestClass for a method
            module = next(p for p in case.get("classname", "").split(".") if p.startswith("test_"))
            file = f"tests/{module}.py"
            name = case.get("name", "").split("[")[0]
            status = "skipped" if case.find("skipped") is not None else "passed"
            if case.find("failure") is not None or case.find("error") is not None:
                status = "failed"
            outcomes.setdefault((file, name), []).append(status)
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="Skip tests marked slow.")
    args = parser.parse_args()
    rows = doc_rows()
    outcomes = _run([ref for _, refs in rows for ref in refs], args.fast)
    proven = 0
    for title, refs in rows:
        results = [status for ref in refs for status in outcomes.get(ref, ["not run"])]
        ok = all(status in ("passed", "skipped") for status in results) and "passed" in results
        proven += ok
        print(f"{'ok  ' if ok else 'FAIL'} {title}: {results.count('passed')} passed of {len(results)}")
    # -k matches substrings, so pytest may run more tests than the page names: count only those.
    named = [outcomes.get(ref, ["not run"]) for ref in {ref for _, refs in rows for ref in refs}]
    cases = sum(len(v) for v in named)
    passed = sum(v.count("passed") for v in named)
    skipped = sum(v.count("skipped") for v in named)
    print(f"\n{proven} of {len(rows)} rows proven; {passed} of {cases} test cases passed, {skipped} skipped.")
    return 0 if proven == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
