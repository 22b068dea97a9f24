"""reference/cli.md, generated at build time (by gen_pages.py) from each console script's `--help`.

The console scripts are read from pyproject.toml's [project.scripts]; each one's `--help` (and each subcommand's,
for a command whose usage line lists subcommands as `{a,b}`) is captured by calling its entry point in this process
with the command's name as the program name, so the page is what a user's terminal prints.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from importlib import import_module
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]
PAGE = "reference/cli.md"
WIDTH = "100"  # argparse wraps help at $COLUMNS - 2


def console_scripts() -> dict[str, str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def help_text(command: str, target: str, argv: list[str]) -> str:
    """What `command *argv --help` prints."""
    module, function = target.split(":")
    main = getattr(import_module(module), function)
    out = io.StringIO()
    saved_argv, saved_columns = sys.argv, os.environ.get("COLUMNS")
    sys.argv, os.environ["COLUMNS"] = [command], WIDTH
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            try:
                main([*argv, "--help"])
            except SystemExit as exit_:
                if exit_.code not in (0, None):
                    raise RuntimeError(f"{command} {' '.join(argv)} --help exited with {exit_.code}") from None
    finally:
        sys.argv = saved_argv
        if saved_columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved_columns
    return out.getvalue().rstrip()


def subcommands(text: str) -> list[str]:
    """The subcommands a usage line lists, e.g. `usage: clay-search [-h] {index,query} ...` → index, query."""
    usage = text.split("\n\n")[0]
    match = re.search(r"(?<!\S)\{([\w,-]+)\} \.\.\.", usage)  # argparse writes subparsers as `{a,b} ...`
    return match.group(1).split(",") if match else []


def page() -> str:
    scripts = console_scripts()
    lines = [
        "# Command line",
        "",
        "Every command is a console script of the package (`pip install` puts it on the PATH); in a checkout,",
        "`python scripts/NAME.py` runs the same entry point (underscores for hyphens). This page is generated",
        "when the documentation is built, from each command's `--help`.",
        "",
        "| command | entry point |",
        "|---|---|",
    ]
    lines += [f"| [`{name}`](#{name}) | `{target}` |" for name, target in sorted(scripts.items())]
    for name, target in sorted(scripts.items()):
        text = help_text(name, target, [])
        lines += ["", f"## {name}", "", "```text", text, "```"]
        for sub in subcommands(text):
            lines += ["", f"### {name} {sub}", "", "```text", help_text(name, target, [sub]), "```"]
    return "\n".join(lines) + "\n"
