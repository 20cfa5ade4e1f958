"""The docs (README.md, docs/**/*.md) name only scripts, recipes, commands and flags that exist.

Commands are read from fenced code blocks (not Python, YAML, JSON or text ones) and inline code spans:
``nlptransfer SUBCOMMAND ...``, ``python scripts/X.py ...``, ``python recipes/X.py ...``,
``accelerate launch [its flags] recipes/X.py ...``, ``torchrun ... recipes/X.py ...`` and
``bash scripts/X.sh ...``. Every ``--flag`` after the script or subcommand must be one that
program accepts: the ``nlptransfer`` subcommands (and the recipes, which run them) are asked
for their ``--help`` in this process; a Python script's flags are the ``add_argument`` calls of
its source; a shell script's are the words its source holds.
"""

from __future__ import annotations

import ast
import contextlib
import glob
import io
import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from conftest import REPO

from nlptransfer.cli import COMMANDS, main

# Recipe -> the nlptransfer subcommand it runs (recipes/*.py call run_recipe(NAME, argv)).
RECIPES = {
    "finetune": "train",
    "pretrain": "pretrain",
    "compare": "compare",
    "predict": "predict",
    "tune": "tune",
}
SKIPPED_LANGUAGES = {"python", "py", "yaml", "yml", "json", "toml", "jsonl", "text", "output"}  # not commands
PATH = re.compile(r"(?<![\w./~-])((?:scripts|recipes|tests)/[\w./*-]*[\w*])")
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    program: str  # "nlptransfer train", "scripts/x.py", "recipes/finetune.py", "scripts/x.sh"
    flags: tuple[str, ...]
    text: str


def doc_files(root: Path = REPO) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def _snippets(text: str) -> list[tuple[int, str]]:
    """(line number, command line) of every fenced shell block line and every inline code span."""
    found, fence, language = [], None, ""
    lines = text.splitlines()
    prose = []  # the text outside fences, line for line, for inline spans (which may wrap a line)
    pending, start = "", 0
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        prose.append("" if fence is not None or stripped.startswith("```") else line)
        if stripped.startswith("```"):
            if fence is None:
                fence, language = stripped[:3], stripped[3:].strip().lower()
            else:
                fence = None
            continue
        if fence is not None:
            if language in SKIPPED_LANGUAGES:
                continue
            if not pending:
                start = number
            code = _strip_comment(stripped).rstrip()  # the docs comment continued lines too
            if code.endswith("\\"):
                pending += code[:-1] + " "
                continue
            found.append((start, pending + code))
            pending = ""
    joined = "\n".join(prose)
    for match in re.finditer(r"`([^`]+)`", joined):
        if "\n\n" not in match.group(1):  # a span never crosses a paragraph
            found.append((joined.count("\n", 0, match.start()) + 1, " ".join(match.group(1).split())))
    return found


def _strip_comment(line: str) -> str:
    return re.split(r"(?:^|\s)#", line, maxsplit=1)[0]


def _tokens(part: str) -> list[str]:
    try:
        return shlex.split(part)
    except ValueError:
        return part.split()


def _commands(doc: str, number: int, part: str) -> list[Command]:
    """The command in ``part``, and the one it wraps after ``--`` (scripts/recorded.py -- CMD)."""
    tokens = _tokens(part)
    if tokens[:1] == ["$"]:
        tokens = tokens[1:]
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", tokens[0]):  # HF_HUB_OFFLINE=1 ...
        tokens = tokens[1:]
    if not tokens:
        return []
    head, program, rest = tokens[0], None, []
    if head == "nlptransfer" and len(tokens) > 1 and not tokens[1].startswith("-"):
        program, rest = f"nlptransfer {tokens[1]}", tokens[2:]
    elif head in ("python", "python3") and len(tokens) > 1 and tokens[1].endswith(".py"):
        program, rest = tokens[1], tokens[2:]
    elif head in ("accelerate", "torchrun"):
        scripts = [i for i, t in enumerate(tokens) if t.endswith(".py")]
        if scripts:
            program, rest = tokens[scripts[0]], tokens[scripts[0] + 1 :]
    elif head in ("bash", "sh") and len(tokens) > 1 and tokens[1].endswith(".sh"):
        program, rest = tokens[1], tokens[2:]
    if program is None or (" " not in program and not program.startswith(("scripts/", "recipes/"))):
        return []
    wrapped: list[Command] = []
    if "--" in rest:
        at = rest.index("--")
        wrapped = _commands(doc, number, shlex.join(rest[at + 1 :]))
        rest = rest[:at]
    flags = tuple(t.split("=", 1)[0] for t in rest if FLAG.fullmatch(t.split("=", 1)[0]))
    return [Command(doc, number, program, flags, part.strip()), *wrapped]


def commands_in(text: str, doc: str = "<text>") -> list[Command]:
    found = []
    for number, snippet in _snippets(text):
        for part in re.split(r"&&|\|\||;|\|", _strip_comment(snippet)):
            found += _commands(doc, number, part)
    return found


def path_problems(text: str, doc: str = "<text>", root: Path = REPO) -> list[str]:
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        for path in PATH.findall(line):
            ok = glob.glob(str(root / path)) if "*" in path else (root / path).exists()
            if not ok:
                problems.append(f"{doc}:{number}: names {path}, which does not exist")
    return problems


@cache
def subcommand_flags(name: str) -> frozenset[str]:
    out = io.StringIO()
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(io.StringIO()),
        pytest.raises(SystemExit),
    ):
        main([name, "--help"])
    return frozenset(FLAG.findall(out.getvalue()))


@cache
def script_flags(path: Path) -> frozenset[str] | None:
    """The options of a script: its add_argument strings (Python), or the words its text holds (shell)."""
    source = path.read_text()
    if path.suffix == ".sh":
        return frozenset(FLAG.findall(source))
    flags = {"--help"}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            flags.update(n for n in names if n.startswith("--"))
            action = next((k.value for k in node.keywords if k.arg == "action"), None)
            if getattr(action, "attr", "") == "BooleanOptionalAction":
                flags.update(f"--no-{n[2:]}" for n in names if n.startswith("--"))
    return frozenset(flags) if len(flags) > 1 else None


def command_problems(commands: list[Command], root: Path = REPO) -> list[str]:
    problems = []
    for c in commands:
        where = f"{c.doc}:{c.line}: `{c.text}`"
        if c.program.startswith("nlptransfer "):
            name = c.program.split()[1]
            if name.isupper():  # a placeholder: nlptransfer COMMAND --help
                continue
            if name not in COMMANDS:
                problems.append(f"{where}: no such subcommand '{name}' (the commands: {', '.join(COMMANDS)})")
                continue
            accepted: frozenset[str] | None = subcommand_flags(name)
        else:
            path = root / c.program
            if not path.is_file():
                problems.append(f"{where}: {c.program} does not exist")
                continue
            recipe = RECIPES.get(path.stem) if c.program.startswith("recipes/") else None
            accepted = subcommand_flags(recipe) if recipe else script_flags(path)
        if not c.flags:
            continue
        if accepted is None:
            problems.append(f"{where}: passes {', '.join(c.flags)} but {c.program} defines no options")
            continue
        unknown = [flag for flag in c.flags if flag not in accepted]
        if unknown:
            problems.append(f"{where}: {c.program} has no option {', '.join(unknown)}")
    return problems


@cache
def all_commands() -> list[Command]:
    return [c for doc in doc_files() for c in commands_in(doc.read_text(), str(doc.relative_to(REPO)))]


def test_the_docs_hold_the_commands_this_test_reads() -> None:
    # A guard on the reader: were it to find nothing, every other test here would pass vacuously.
    commands = all_commands()
    programs = {c.program for c in commands}
    assert len(commands) >= 40
    assert {"recipes/finetune.py", "nlptransfer compare", "scripts/compare_sources.py"} <= programs
    assert any(c.flags for c in commands if c.program == "recipes/finetune.py")


def test_every_script_recipe_and_test_path_the_docs_name_exists() -> None:
    problems = [p for doc in doc_files() for p in path_problems(doc.read_text(), str(doc.relative_to(REPO)))]
    assert problems == []


def test_every_command_and_flag_the_docs_name_exists() -> None:
    assert command_problems(all_commands()) == []


PLANTED = """\
# A page with mistakes

```bash
python scripts/no_such_script.py --fast
accelerate launch recipes/finetune.py --strategy lora --no_such_flag 3
nlptransfer fly --high
HF_HUB_OFFLINE=1 python scripts/compare_sources.py --layer_sweep --not_an_option
bash scripts/install_assets.sh --everything
python scripts/recorded.py -- nlptransfer compare --budgetz 8
```

Run `nlptransfer advise --no_such_advice` or see `recipes/missing.py` and `tests/test_nothing_here.py`,
or `nlptransfer compare --budgets 8
--wrapped_bad_flag 2` (a code span may wrap a line).
"""

GOOD = """\
```bash
accelerate launch --num_processes 2 recipes/finetune.py --strategy lora --no-feature_cache \\
    --output_dir runs/x   # a comment --not_a_flag
nlptransfer advise --samples_per_label 8 && python scripts/compare_sources.py --layer_sweep --page p.md
bash scripts/install_assets.sh --all
python scripts/recorded.py -- nlptransfer compare --budgets 8 all
```

```python
nlptransfer fly --whatever  # a Python block is not read for commands
```

`nlptransfer compare --budgets 8 all`, `scripts/bench/run.py`, `recipes/configs/*.yaml`.
"""


def test_planted_bad_names_and_flags_fail() -> None:
    problems = command_problems(commands_in(PLANTED, "planted.md")) + path_problems(PLANTED, "planted.md")
    text = "\n".join(problems)
    for expected in (
        "scripts/no_such_script.py does not exist",
        "recipes/finetune.py has no option --no_such_flag",
        "no such subcommand 'fly'",
        "scripts/compare_sources.py has no option --not_an_option",
        "scripts/install_assets.sh has no option --everything",
        "nlptransfer advise has no option --no_such_advice",
        "nlptransfer compare has no option --budgetz",
        "nlptransfer compare has no option --wrapped_bad_flag",
        "names recipes/missing.py, which does not exist",
        "names tests/test_nothing_here.py, which does not exist",
    ):
        assert expected in text, text
    # --strategy and --layer_sweep are real: only the planted flags are reported.
    assert "no option --strategy" not in text and "--layer_sweep," not in text


def test_real_names_and_flags_pass() -> None:
    commands = commands_in(GOOD, "good.md")
    assert {c.program for c in commands} == {
        "recipes/finetune.py", "nlptransfer advise", "scripts/compare_sources.py",
        "scripts/install_assets.sh", "nlptransfer compare", "scripts/recorded.py",
    }  # fmt: skip
    finetune = next(c for c in commands if c.program == "recipes/finetune.py")
    assert finetune.flags == ("--strategy", "--no-feature_cache", "--output_dir")  # not accelerate's, nor #
    assert command_problems(commands) == [] and path_problems(GOOD, "good.md") == []
