"""docs/reliability.md names only tests that exist, and every row names at least one."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from conftest import REPO


def _doc_rows():
    spec = importlib.util.spec_from_file_location("reliability", REPO / "scripts" / "reliability.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.doc_rows()


def _test_names(file: Path) -> set[str]:
    # Module-level tests and methods of Test* classes: pytest collects both.
    tree = ast.parse(file.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test")
    }


def test_every_test_the_page_names_exists() -> None:
    rows = _doc_rows()
    assert len(rows) >= 26  # the list: data 10, models 5, runs 4, fuzzing, security 4, determinism 2
    missing = [
        f"{title}: {file}::{name}"
        for title, refs in rows
        for file, name in refs
        if not (REPO / file).is_file() or name not in _test_names(REPO / file)
    ]
    assert missing == []


def test_every_table_row_names_a_test() -> None:
    text = (REPO / "docs" / "reliability.md").read_text()
    table_rows = [
        line
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith("| #") and "---" not in line
    ]
    assert len(table_rows) == len(_doc_rows())
