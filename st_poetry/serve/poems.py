"""The poem each hit belongs to: a group with a title, in corpus order. CCPM and FlagEmbedding groups are records of
choices, not poems; they carry no title, which is how a poem is told apart.

Read from the lines table's memory-mapped columns (a group's rows by binary search, `Lines.group_rows`; each line's
title code), so a server worker builds no table of poems of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

from st_poetry.retrieval.lines import Lines


class Poems:
    """Which lines (rows of the index) make up the poem of a group."""

    def __init__(self, lines: Lines) -> None:
        self.lines, self.titles = lines, lines.numbers("title")

    def rows_of(self, groups: Sequence[str]) -> list[list[int]]:
        """Each group's titled lines in corpus order; none for a group that is not a poem."""
        found = [self.lines.group_rows(group) for group in groups]
        return [rows[self.titles[rows] > 0].tolist() for rows in found]
