"""MkDocs hook: the pages that are generated from the code at build time, so they cannot drift from it.

- `<!-- generated: recipes -->` becomes a table of the Justfile's recipes with their comments;
- `<!-- generated: commands -->` becomes every `st-poetry` command's `--help`, from `commands()`;
- `<!-- generated: row PAIR -->` (MINED, CORPUS) becomes the fields `st_poetry/core/schema.py` declares for that row.

The commands are `st_poetry.cli.COMMANDS` (command -> its config class), so a new command is documented as soon as
the dispatcher knows it. `commands()` is the one function that knows how a command's parser is built: a new CLI
library changes that function and nothing else. The hook imports only `st_poetry.cli`, `st_poetry.core.config` and
`st_poetry.core.schema`, which load no torch (import-linter's contract, checked again below), so the site builds
in seconds; a training command's reference lists its own options, and its --help's closing note says that every
field of the trainer's arguments is one too (documented by sentence-transformers).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # this checkout's st_poetry, not a copy installed elsewhere

_TORCH_BEFORE = "torch" in sys.modules
from st_poetry.cli import COMMANDS, options  # noqa: E402
from st_poetry.core import schema  # noqa: E402

if "torch" in sys.modules and not _TORCH_BEFORE:
    raise PluginError("docs/hooks/cli_reference.py: importing st_poetry.cli or st_poetry.core loaded torch")

ROWS = {"PAIR": schema.PAIR, "MINED": schema.MINED, "CORPUS": schema.CORPUS}
MARKER = re.compile(r"<!-- generated: (recipes|commands|row (\w+)) -->")
RUNS_COMMAND = re.compile(r"-m st_poetry (\S+)")  # a recipe line `{{python}} -m st_poetry COMMAND "$@"`
HELP_WIDTH = 96


def commands() -> Iterator[tuple[str, str]]:
    """(command, its --help text) for every `st-poetry` command, in the dispatcher's order, each named by the
    `just` recipe that runs it (`st-poetry NAME` when none does)."""
    by_recipe = {command: recipe for recipe, command in _recipe_commands().items()}
    for name, (cls, _runner) in COMMANDS.items():
        prog = f"just {by_recipe[name]}" if name in by_recipe else f"st-poetry {name}"
        parser = options.Parser(cls, prog=prog, trainer=False)  # the trainer's fields would import torch
        parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=HELP_WIDTH, max_help_position=30)
        yield prog, parser.format_help()


def _justfile() -> Iterator[tuple[str, str, list[str]]]:
    """(recipe, its comment, its body lines) for every Justfile recipe, in file order, `default` left out."""
    comment: list[str] = []
    recipe: tuple[str, str, list[str]] | None = None
    for line in (ROOT / "Justfile").read_text(encoding="utf-8").splitlines():
        if line.startswith(" ") and recipe:
            recipe[2].append(line)
            continue
        if recipe:
            yield recipe
            recipe = None
        if line.startswith("#"):
            comment.append(line.lstrip("# ").strip())
        elif match := re.match(r"([a-z][\w-]*)[^:=]*:(?!=)", line):
            if match.group(1) != "default":
                recipe = (match.group(1), " ".join(comment), [])
            comment = []
        else:
            comment = []
    if recipe:
        yield recipe


def _recipe_commands() -> dict[str, str]:
    """recipe -> the `st-poetry` command its body runs; a command that `COMMANDS` lacks stops the build."""
    found = {}
    for recipe, _comment, body in _justfile():
        for line in body:
            if match := RUNS_COMMAND.search(line):
                if match.group(1) not in COMMANDS:
                    raise PluginError(
                        f"Justfile: recipe {recipe} runs `st-poetry {match.group(1)}`, which st_poetry.cli.COMMANDS"
                        f" lacks (known: {', '.join(COMMANDS)})"
                    )
                found[recipe] = match.group(1)
    return found


def recipes() -> list[tuple[str, str]]:
    """(recipe, its comment) for every Justfile recipe, in file order, `default` left out."""
    _recipe_commands()  # a recipe that runs an unknown command stops the build
    return [(recipe, comment) for recipe, comment, _body in _justfile()]


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def recipes_table() -> str:
    rows = [f"| `just {name}` | {_escape(comment)} |" for name, comment in recipes()]
    return "\n".join(["| command | what it does |", "| --- | --- |", *rows])


def commands_reference() -> str:
    parts = []
    for command, help_text in commands():
        parts += [f"## `{command}`", "", "```text", help_text.rstrip(), "```", ""]
    return "\n".join(parts)


def _default(field: schema.Field) -> str:
    if field.required:
        return ""
    if callable(field.default):
        return f"`{field.default_for(0)}`, `{field.default_for(1)}`, ... by row"
    value = field.default_for(0)
    return "`[]`" if value == [] else f'`"{value}"`' if isinstance(value, str) else f"`{value!r}`"


def row_table(row_type: schema.RowType) -> str:
    lines = ["| field | value | required | when missing |", "| --- | --- | --- | --- |"]
    for field in row_type.fields:
        value = field.type + (", unique in the file" if field.unique else "")
        required = "yes" if field.required else "no"
        lines.append(f"| `{field.name}` | {value} | {required} | {_default(field)} |")
    if numbered := row_type.numbered:
        name = f"`{numbered.name}_1` ... `{numbered.name}_n`"
        lines.append(f"| {name} | {numbered.type} | as many as the row has | |")
    return "\n".join(lines)


def _replace(match: re.Match[str]) -> str:
    if match.group(1) == "recipes":
        return recipes_table()
    if match.group(1) == "commands":
        return commands_reference()
    if match.group(2) not in ROWS:
        raise PluginError(f"no row type {match.group(2)} in st_poetry/core/schema.py (known: {', '.join(ROWS)})")
    return row_table(ROWS[match.group(2)])


def on_page_markdown(markdown: str, **kwargs: object) -> str:
    return MARKER.sub(_replace, markdown)
