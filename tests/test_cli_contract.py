"""A contract over every verb of the command line (as timm tests every registered model):
each verb and sub-verb of the Typer app answers ``--help`` with exit code 0 and an
example of itself, and no ``--help`` imports torch (``medres --help`` must be instant).

The verbs are read from the app, so a new verb is covered without touching this file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import pairwise

import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from medres.cli import app
from tests.conftest import PROJECT

runner = CliRunner()


def _paths(group: TyperGroup, prefix: tuple[str, ...] = ()):
    """``(path, is_group)`` for every command under ``group``: ``(("train",), False)``,
    ``(("review",), True)``, ``(("review", "load"), False)``..."""
    for name, command in group.commands.items():
        is_group = isinstance(command, TyperGroup)
        yield (*prefix, name), is_group
        if is_group:
            yield from _paths(command, (*prefix, name))


ROOT = typer.main.get_command(app)
assert isinstance(ROOT, TyperGroup)
PATHS = sorted(path for path, _ in _paths(ROOT))
GROUPS = sorted(path for path, is_group in _paths(ROOT) if is_group)
VERBS = [p for p in PATHS if p not in GROUPS]


def test_the_walk_finds_every_verb_of_the_documented_command_line():
    """DESIGN §7's verbs (those that exist today) and both groups' sub-verbs: the walk
    below is not vacuous."""
    found = {" ".join(p) for p in PATHS}
    documented = {
        "ingest", "split", "audit", "train", "evaluate", "predict", "retrain", "compare",
        "promote", "drift", "run", "datasets", "datasets medmnist", "review", "review load",
        "review serve", "review add-user", "review export",
    }  # fmt: skip
    assert documented <= found, documented - found


@pytest.mark.parametrize("path", VERBS, ids=" ".join)
def test_every_verb_answers_help_with_an_example_of_itself(path):
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert f"Usage: medres {' '.join(path)} " in text
    assert "Example:" in text, f"`medres {' '.join(path)}` documents no example"
    example = text[text.index("Example:") :]
    # Typer (Markdown mode) keeps the docstring's indented example lines as a code block: one
    # starts with the command itself, ready to copy
    starts = [line.strip() for line in example.splitlines()]
    assert any(s.startswith(f"medres {' '.join(path)} ") for s in starts), example


@pytest.mark.parametrize("path", GROUPS, ids=" ".join)
def test_every_group_answers_help_listing_its_verbs(path):
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    names = [p[-1] for p in VERBS if p[:-1] == path]
    assert names and all(name in result.output for name in names)


def test_help_imports_no_torch_in_a_fresh_process():
    """``medres --help`` and every verb's ``--help``, through the console script's
    ``main()`` in a fresh interpreter, leave torch (and pandas and pydicom, which the
    cli's docstring also keeps out of ``--help``) unimported."""
    script = (
        "import contextlib, io, json, sys\n"
        "from medres.cli import main\n"
        "codes = []\n"
        "for path in json.loads(sys.argv[1]):\n"
        "    sys.argv = ['medres', *path, '--help']\n"
        "    try:\n"
        "        with contextlib.redirect_stdout(io.StringIO()):\n"
        "            main()\n"
        "    except SystemExit as e:\n"
        "        codes.append(e.code)\n"
        "heavy = [m for m in ('torch', 'pandas', 'pydicom') if m in sys.modules]\n"
        "print(json.dumps({'codes': codes, 'heavy': heavy}))\n"
    )
    paths = [[], *map(list, PATHS)]
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(paths)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["codes"] == [0] * len(paths)
    assert result["heavy"] == [], f"--help imported {result['heavy']}"


@pytest.mark.parametrize("path", VERBS, ids=" ".join)
def test_help_text_reflows_to_the_terminal_width(path):
    """At 80 columns a description paragraph wraps as one paragraph: no line of a single
    word in the middle of it (the docstring's own line breaks kept, then wrapped again),
    and text in square brackets (`[train]`) is shown, not taken for markup."""
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    lines = result.output[: result.output.index("Example:")].splitlines()
    orphans = [
        line.strip() for line, after in pairwise(lines) if len(line.split()) == 1 and after.strip()
    ]
    assert not orphans, f"`medres {' '.join(path)} --help` wraps badly: {orphans}"


def test_square_brackets_in_help_are_shown():
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "100"})
    assert "a [train] table" in result.output and "Override a [train] key" in result.output
