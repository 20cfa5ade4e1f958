"""The layout docs/architecture.md describes: few top-level modules, no import cycle, short functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "nlptransfer"
MAX_TOP_LEVEL_MODULES = 8
MAX_FUNCTION_LINES = 60


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.Module, module: str, is_package: bool) -> list[str]:
    """Every module name an import runs while ``module`` loads, lazy imports in functions included;
    imports under ``if TYPE_CHECKING:`` are left out (they never run)."""
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)
               for n in ast.walk(node) if n is not node.test}  # fmt: skip
    names = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join([*anchor, base] if base else anchor)
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return names


def _edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package modules importing it runs, each package __init__ on the way included
    (importing a.b.c runs a.b's __init__ first) except the importer's own ancestors, which are
    always loaded before it."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        tree = ast.parse(path.read_text(), str(path))
        for target in _imported_names(tree, name, path.name == "__init__.py"):
            parts = target.split(".")
            prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
            graph[name] |= {p for p in prefixes if p in modules and p not in ancestors and p != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_in_the_package() -> None:
    assert _cycles(_edges(_modules())) == []


def test_the_cycle_finder_sees_a_cycle_through_a_package_init(tmp_path: Path) -> None:
    """The kind of cycle this test was written for: a/__init__ -> b.m, which runs b/__init__ first,
    which imports b.n -> a.k, which needs a/__init__ again."""
    root = tmp_path / "nlptransfer"
    for folder, files in {"a": {"__init__.py": "from nlptransfer.b.m import x\n", "k.py": ""},
                          "b": {"__init__.py": "from nlptransfer.b.n import y\n", "m.py": "x = 1\n",
                                "n.py": "from nlptransfer.a.k import z\n"}}.items():  # fmt: skip
        (root / folder).mkdir(parents=True)
        for name, text in files.items():
            (root / folder / name).write_text(text)
    (root / "__init__.py").write_text("")
    assert _cycles(_edges(_modules(root))) == [["nlptransfer.a", "nlptransfer.b", "nlptransfer.b.n"]]
    # The same imports under TYPE_CHECKING never run: no cycle.
    (root / "b" / "n.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                     "    from nlptransfer.a.k import z\n")  # fmt: skip
    assert _cycles(_edges(_modules(root))) == []


def test_at_most_eight_modules_at_the_top_level() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def _long_functions() -> list[str]:
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    return long


def test_no_function_over_sixty_lines() -> None:
    assert _long_functions() == []


@pytest.mark.parametrize(
    "package", sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
)
def test_architecture_page_describes_every_package(package: str) -> None:
    page = (REPO / "docs" / "architecture.md").read_text()
    assert f"`{package}/`" in page, f"docs/architecture.md does not describe nlptransfer/{package}/"


@pytest.mark.parametrize(
    "code",
    [
        "import nlptransfer",
        "from nlptransfer import FinetuneConfig, ConfigError, __version__",
        "from nlptransfer.cli import main; main(['--help'])",
        "from nlptransfer.cli import main; main(['train', '--help'])",
        "from nlptransfer.cli import main; main(['layers', '--help'])",
        "from nlptransfer.cli import main; main(['tune', '--help'])",
    ],
)
def test_import_and_help_load_neither_torch_nor_transformers(code: str) -> None:
    import subprocess
    import sys

    # --help ends in SystemExit; what counts is which heavy modules got imported by then.
    script = (
        "import contextlib, io, sys\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        f"    exec({code!r})\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sklearn') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_text_run_loads_no_image_processor_and_no_evaluate() -> None:
    """transformers' image processors (3 s) load for image models only; evaluate (2 s) for metrics
    that are not built in."""
    import subprocess
    import sys

    script = (
        "import sys, nlptransfer.runs.finetune\n"
        "print(sorted(m for m in ('nlptransfer.backbones.hf_vision', 'transformers.image_processing_utils', "
        "'evaluate') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_lazy_names_of_the_package_resolve() -> None:
    import nlptransfer
    import nlptransfer.advisor

    for package in (nlptransfer, nlptransfer.advisor):
        for name in package.__all__:
            assert getattr(package, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        nlptransfer.nope  # noqa: B018
