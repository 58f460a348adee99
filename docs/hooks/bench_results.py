"""MkDocs hook: `<!-- bench-results -->` becomes a table of the benchmark result files, benchmarks/results/*.json.

`python scripts/bench.py NAME` (`just bench NAME`) writes one file per benchmark (`benchlib.write_result`): the
figures with the command, date, machine, load average, heavy-run lock and a small `summary` of headline figures.
The table shows one row per file and the commands below it, so the page cannot show a figure that no file holds.
A file that lacks a field stops the build with the file and field named. Only the standard library and mkdocs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
MARKER = "<!-- bench-results -->"
REQUIRED = ("name", "command", "date", "machine", "load_average", "heavy_lock", "summary")


def read_results(folder: Path | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """(file, result) for every NAME.json in `folder` (benchmarks/results), by name; a missing folder holds none."""
    folder = folder or RESULTS
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise PluginError(f"{path}: not JSON ({error})") from error
        if not isinstance(result, dict):
            raise PluginError(f"{path}: not a JSON object")
        for field in REQUIRED:
            if field not in result:
                raise PluginError(f"{path}: no field {field!r} (scripts/benchlib.py's write_result writes it)")
        if result["name"] != path.stem:
            raise PluginError(f"{path}: field 'name' is {result['name']!r}, not the file's name {path.stem!r}")
        if not isinstance(result["summary"], dict):
            raise PluginError(f"{path}: field 'summary' is not an object")
        found.append((path, result))
    return found


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4g}"


def _machine(machine: dict[str, Any]) -> str:
    cpu = str(machine.get("cpu", machine.get("arch", "?"))).replace("(R)", "").replace("(TM)", "")
    text = f"{machine.get('cpus', '?')} × {cpu}"
    if "memory_gib" in machine:
        text += f", {machine['memory_gib']} GiB"
    if machine.get("gpus"):
        text += ", " + ", ".join(machine["gpus"])
    return text


def _lock(lock: dict[str, Any]) -> str:
    if lock.get("held_by_this_run"):
        return "held"
    return "not held, another run held it" if lock.get("held_by_others") else "not held"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def results_table(folder: Path | None = None) -> str:
    """The table of every result file in `folder` (benchmarks/results), then each one's command."""
    folder = folder or RESULTS
    results = read_results(folder)
    if not results:
        return f"*No result files in `{folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder}` yet.*"
    lines = [
        "| benchmark | date (UTC) | machine | load average (1 min), start → end | heavy-run lock | headline figures |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    commands = []
    for _path, result in results:
        load = result["load_average"]
        figures = "<br>".join(f"{key}: **{_number(value)}**" for key, value in result["summary"].items())
        cells = [
            f"`{result['name']}`",
            result["date"][:16].replace("T", " "),
            _machine(result["machine"]),
            f"{load['before'][0]:.2f} → {load['after'][0]:.2f}",
            _lock(result["heavy_lock"]),
            figures or "(no summary)",
        ]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
        versions = ", ".join(f"{name} {version}" for name, version in result.get("versions", {}).items())
        at = f"commit {result['commit']}, " if result.get("commit") else ""
        commands.append(f"- `{result['name']}` ({at}{versions}):\n  `{result['command']}`")
    return "\n".join([*lines, "", "Each result's command, commit and package versions:", "", *commands])


def on_page_markdown(markdown: str, **kwargs: object) -> str:
    return markdown.replace(MARKER, results_table()) if MARKER in markdown else markdown
