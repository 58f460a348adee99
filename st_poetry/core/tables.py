"""The one table formatter of the console summaries: columns aligned in terminal columns, where a Chinese
character takes two. Stdlib only."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence


def display_width(text: str) -> int:
    """Terminal columns: East Asian wide and fullwidth characters (CJK, ，) take two."""
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def _pad(text: str, width: int, align: str) -> str:
    space = " " * (width - display_width(text))
    return space + text if align == "r" else text + space


def format_table(
    headers: Sequence[object] | None,
    rows: Sequence[Sequence[object]],
    *,
    align: str = "l",
    indent: str = "",
    markdown: bool = False,
) -> str:
    """`rows` under `headers` (None: no header line) as aligned lines; cells are shown with str().

    `align` has a letter per column, "l" or "r" (numbers), its last letter standing for the columns after it:
    "lr" is a label column then numbers. `markdown` makes a Markdown table, its cells padded the same way so the
    file reads as a table too.
    """
    if markdown and headers is None:
        raise ValueError("a Markdown table needs headers")
    table = [[str(cell) for cell in row] for row in ([headers] if headers is not None else []) + list(rows)]
    if not table:
        return ""
    columns = max(map(len, table))
    table = [row + [""] * (columns - len(row)) for row in table]
    aligns = [align[min(i, len(align) - 1)] for i in range(columns)]
    if set(aligns) - {"l", "r"}:
        raise ValueError(f"align: one of l or r per column, not {align!r}")
    widths = [max(display_width(row[i]) for row in table) for i in range(columns)]
    if markdown:
        widths = [max(width, 3) for width in widths]
        lines = [indent + "| " + " | ".join(map(_pad, row, widths, aligns)) + " |" for row in table]
        rule = ["-" * (width - 1) + ":" if a == "r" else "-" * width for width, a in zip(widths, aligns, strict=True)]
        lines.insert(1, indent + "| " + " | ".join(rule) + " |")
    else:
        lines = [indent + "  ".join(map(_pad, row, widths, aligns)).rstrip() for row in table]
    return "\n".join(lines)
