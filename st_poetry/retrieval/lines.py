"""An index's lines table: the corpus metadata (schema.CORPUS's fields), row i = faiss id i, in one Arrow IPC file.

Opened memory-mapped, so a search reads only the rows it returns and the OS shares the pages between processes.
Written as one record batch (more only where a column outgrows Arrow's 2 GiB of strings): opening a file maps the
pages around every batch's header, which for small batches (`datasets`' 1,000 rows) came to most of the file.

A poem's title, author, dynasty and group repeat on each of its lines, so they are stored once per distinct value
(Arrow dictionaries): the file is half the size. Each dictionary is sorted and starts with "" (code 0: no title,
no group), and GROUP_ORDER lists the rows by group code, corpus order within a group: a group's rows are found by
two binary searches over the mapped file (`group_rows`), with no table of them built in each process.

Only pyarrow: the query path does not import `datasets`.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from st_poetry.core.schema import CORPUS

LINES_FILE = "lines.arrow"
FIELDS = CORPUS.names
REPEATED = ("title", "author", "dynasty", "group")
GROUP_ORDER = "group_order"
BATCH_ROWS = 1 << 24


def write_lines(path: str | Path, rows: Sequence[dict[str, str]]) -> None:
    """The rows' FIELDS as an Arrow IPC file, the REPEATED ones dictionary-encoded (`sorted_codes`), and GROUP_ORDER."""
    table = pa.table({name: pa.array([row[name] for row in rows], pa.string()) for name in FIELDS})
    for name in REPEATED:
        table = table.set_column(table.schema.get_field_index(name), name, sorted_codes(table[name]))
    group_codes = pa.chunked_array([chunk.indices for chunk in table["group"].chunks], pa.int32())
    table = table.append_column(GROUP_ORDER, pc.cast(pc.sort_indices(group_codes), pa.int32()))  # a stable sort
    with pa.ipc.new_file(str(path), table.schema) as writer:
        writer.write_table(table, max_chunksize=BATCH_ROWS)


def sorted_codes(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """The column as codes into its distinct values sorted, "" first (code 0) whether or not a row has it."""
    values = pc.unique(pa.chunked_array([pa.array([""]), *column.chunks])).sort()
    codes = pc.index_in(column, value_set=values)
    return pa.chunked_array([pa.DictionaryArray.from_arrays(chunk, values) for chunk in codes.chunks])


class Lines:
    """A lines table opened memory-mapped; `OSError`/`pa.ArrowInvalid` for a missing or damaged file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        reader = pa.ipc.open_file(pa.memory_map(str(self.path)))
        if reader.schema.names != [*FIELDS, GROUP_ORDER]:
            raise pa.ArrowInvalid(f"columns {reader.schema.names}, expected {[*FIELDS, GROUP_ORDER]}")
        if not reader.num_record_batches:
            raise pa.ArrowInvalid("no rows")
        self.schema = reader.schema
        self.batches = [reader.get_batch(number) for number in range(reader.num_record_batches)]
        self.starts = np.cumsum([0] + [batch.num_rows for batch in self.batches])
        self.groups = self.batches[0].column("group").dictionary
        self.group_codes, self.group_order = self.numbers("group"), self.numbers(GROUP_ORDER)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def rows(self, ids: Sequence[int]) -> dict[str, list[Any]]:
        """The FIELDS of rows `ids`, in that order (one zero-copy slice a row, then one conversion)."""
        found = np.searchsorted(self.starts, ids, side="right") - 1
        slices = [self.batches[batch].slice(i - self.starts[batch], 1) for i, batch in zip(ids, found, strict=True)]
        return pa.Table.from_batches(slices, schema=self.schema).select(FIELDS).to_pydict()

    def column(self, name: str) -> pa.ChunkedArray:
        """A whole column, still memory-mapped: reading it faults in its pages."""
        return pa.chunked_array([batch.column(name) for batch in self.batches], self.schema.field(name).type)

    def numbers(self, name: str) -> np.ndarray:
        """A REPEATED column's codes, or GROUP_ORDER, as int32: memory-mapped where the file is one record batch."""
        arrays = [
            _int32s(column.indices if isinstance(column, pa.DictionaryArray) else column)
            for column in self.column(name).chunks
        ]
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    def group_code(self, group: str) -> int:
        """The group's code in the sorted dictionary (0: ""), -1 for a name the table does not have."""
        code = bisect.bisect_left(range(len(self.groups)), group, key=lambda position: self.groups[position].as_py())
        return code if code < len(self.groups) and self.groups[code].as_py() == group else -1

    def group_rows(self, group: str) -> np.ndarray:
        """The rows of a group in corpus order; none for "" (no group) or a name the table does not have."""
        code = self.group_code(group)
        if code <= 0:
            return np.empty(0, np.int32)
        start = bisect.bisect_left(self.group_order, code, key=self.group_codes.__getitem__)
        end = bisect.bisect_right(self.group_order, code, lo=start, key=self.group_codes.__getitem__)
        return self.group_order[start:end]


def _int32s(array: pa.Array) -> np.ndarray:
    """An int32 array without nulls as numpy, zero-copy: its `to_numpy` imports pandas, tens of MB a process."""
    return np.frombuffer(array.buffers()[1], np.int32, len(array), array.offset * 4)
