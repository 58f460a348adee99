"""MkDocs hook: the pages that are generated from the code at build time, so they cannot drift from it.

- `<!-- generated: recipes -->` becomes a table of the Justfile's recipes with their comments;
- `<!-- generated: commands -->` becomes every stage command's `--help`, from `commands()`;
- `<!-- generated: row PAIR -->` (MINED, CORPUS) becomes the fields `st_poetry/schema.py` declares for that row.

`commands()` is the one function that knows how the command line is built: it yields (command, help text) pairs.
A new CLI library changes that function and nothing else. The hook imports only `st_poetry.config` and
`st_poetry.schema`, which are stdlib-only (no torch), so the site builds in a second.
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

from st_poetry import config, schema  # noqa: E402

# Each `just` recipe that runs a stage -> the config class its module's `run_cli` parses. A recipe that runs a
# module and is missing here stops the build (see `recipes`), so a new command cannot go undocumented.
STAGES: dict[str, type] = {
    "download": config.DownloadConfig,
    "prepare": config.PrepareConfig,
    "mine": config.MineConfig,
    "train": config.TrainConfig,
    "train-reranker": config.RerankConfig,
    "evaluate": config.EvaluateConfig,
    "export": config.ExportConfig,
    "index": config.IndexConfig,
    "search": config.QueryConfig,
    "serve": config.ServeConfig,
    "pipeline": config.PipelineConfig,
}
ROWS = {"PAIR": schema.PAIR, "MINED": schema.MINED, "CORPUS": schema.CORPUS}
MARKER = re.compile(r"<!-- generated: (recipes|commands|row (\w+)) -->")
HELP_WIDTH = 96


def commands() -> Iterator[tuple[str, str]]:
    """(command, its --help text) for every stage command, in pipeline order."""
    for recipe, cls in STAGES.items():
        parser = config.build_parser(cls, prog=f"just {recipe}")
        parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=HELP_WIDTH, max_help_position=30)
        yield f"just {recipe}", parser.format_help()


def recipes() -> list[tuple[str, str]]:
    """(recipe, its comment) for every Justfile recipe, in file order, `default` left out; a recipe whose body runs
    `-m st_poetry.MODULE` must have its config class in STAGES."""
    found: list[tuple[str, str]] = []
    comment: list[str] = []
    runs_module: set[str] = set()
    recipe = None
    for line in (ROOT / "Justfile").read_text(encoding="utf-8").splitlines():
        if line.startswith(" ") and recipe:
            if "-m st_poetry." in line:
                runs_module.add(recipe)
        elif line.startswith("#"):
            comment.append(line.lstrip("# ").strip())
        elif match := re.match(r"([a-z][\w-]*)[^:=]*:(?!=)", line):
            recipe = match.group(1)
            if recipe != "default":
                found.append((recipe, " ".join(comment)))
            comment = []
        else:
            recipe, comment = None, []
    if missing := sorted(runs_module - set(STAGES)):
        raise PluginError(f"docs/hooks/cli_reference.py: STAGES lacks the Justfile recipe(s) {', '.join(missing)}")
    return found


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
        raise PluginError(f"no row type {match.group(2)} in st_poetry/schema.py (known: {', '.join(ROWS)})")
    return row_table(ROWS[match.group(2)])


def on_page_markdown(markdown: str, **kwargs: object) -> str:
    return MARKER.sub(_replace, markdown)
