"""The poem each hit belongs to: a group with a title, in corpus order. CCPM and FlagEmbedding groups are records of
choices, not poems; they carry no title, which is how a poem is told apart.

Kept as arrays over the lines table (a code per line, the lines sorted by code) computed by pyarrow, with no Python
object per line: each server worker holds its own copy, and a dict of row lists for the whole collection's poems
took a process about 140 MB where these arrays take about 60 (docs/BENCHMARKS.md, "The whole collection with
pq4-sq8").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset


class Poems:
    """Which lines (rows of the index) make up the poem of a group."""

    def __init__(self, lines: Dataset) -> None:
        self.groups, codes = _group_codes(lines)
        self.rows = np.argsort(codes, kind="stable").astype(np.int32)  # by group, corpus order within one
        self.starts = np.searchsorted(codes[self.rows], np.arange(len(self.groups) + 1))
        # a group's code from its name: the names' hashes, sorted (a dict of every name would hold them all as
        # Python objects; pyarrow's index_in builds its hash table anew on every call)
        hashes = np.fromiter(map(hash, self.groups.to_pylist()), dtype=np.int64, count=len(self.groups))
        self.by_hash = np.argsort(hashes)
        self.hashes = hashes[self.by_hash]
        pa.default_memory_pool().release_unused()  # the column copies, freed: not kept for later allocations

    def code(self, group: str) -> int:
        """The group's code, -1 for a name the table does not have."""
        found = hash(group)
        for position in range(int(np.searchsorted(self.hashes, found)), len(self.hashes)):
            if self.hashes[position] != found:
                break
            code = int(self.by_hash[position])
            if self.groups[code].as_py() == group:
                return code
        return -1

    def rows_of(self, groups: Sequence[str]) -> list[list[int]]:
        """Each group's lines in corpus order; none for a group that is not a poem."""
        codes = [self.code(group) for group in groups]
        return [self.rows[self.starts[code] : self.starts[code + 1]].tolist() if code >= 0 else [] for code in codes]


def _group_codes(lines: Dataset) -> tuple[pa.Array, np.ndarray]:
    """The distinct groups and each line's code among them, -1 for a line without a title (no poem).

    A table on disk is read again for it with plain reads (and the copy freed), not through its memory map: a scan
    of two columns through the map would leave their pages resident in every worker's share of the table, where
    searches touch only the rows they return.
    """
    files = [entry["filename"] for entry in lines.cache_files]
    table = (
        pa.concat_tables([pa.ipc.open_stream(pa.OSFile(file)).read_all() for file in files]) if files else lines.data
    )
    group = table.column("group").combine_chunks()
    titled = pc.and_(pc.not_equal(group, ""), pc.not_equal(table.column("title"), "")).to_numpy()
    encoded = pc.dictionary_encode(group)
    return encoded.dictionary, np.where(titled, encoded.indices.to_numpy(), -1)
