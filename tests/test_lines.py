"""The index's lines table: rows come back as written, in the order asked, across record batches."""

import pyarrow as pa
import pytest

from st_poetry.retrieval import lines as lines_module
from st_poetry.retrieval.lines import FIELDS, GROUP_ORDER, LINES_FILE, REPEATED, Lines, write_lines


def _rows(count):
    return [
        {"id": f"l{i}", "text": f"第{i}行", "title": f"诗{i // 4}", "author": "李白", "dynasty": "唐"}
        | {"group": f"g{i // 4}"}
        for i in range(count)
    ]


def test_rows_come_back_as_written_in_the_order_asked_across_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(lines_module, "BATCH_ROWS", 4)
    rows = _rows(10)
    write_lines(tmp_path / LINES_FILE, rows)
    table = Lines(tmp_path / LINES_FILE)
    assert len(table) == 10 and len(table.batches) == 3
    ids = [9, 0, 4, 3, 9]
    assert table.rows(ids) == {name: [rows[i][name] for i in ids] for name in FIELDS}
    assert table.rows([]) == {name: [] for name in FIELDS}
    assert table.column("text").to_pylist() == [row["text"] for row in rows]


def test_repeated_columns_hold_each_value_once_sorted_after_the_empty_one(tmp_path, monkeypatch):
    """Code 0 is "" in every dictionary, whether or not a row has it: serve.poems relies on it."""
    monkeypatch.setattr(lines_module, "BATCH_ROWS", 4)
    rows = _rows(10)
    rows[5]["title"] = ""
    rows.reverse()
    write_lines(tmp_path / LINES_FILE, rows)
    table = Lines(tmp_path / LINES_FILE)
    for name in REPEATED:
        chunks = table.column(name).chunks
        assert all(chunk.dictionary.equals(chunks[0].dictionary) for chunk in chunks)
    assert table.groups.to_pylist() == ["", "g0", "g1", "g2"]
    assert table.numbers("group").tolist() == [3, 3, 2, 2, 2, 2, 1, 1, 1, 1]
    assert table.column("dynasty").chunk(0).dictionary.to_pylist() == ["", "唐"]
    assert table.column("title").chunk(0).dictionary.to_pylist() == ["", "诗0", "诗1", "诗2"]
    assert table.numbers("title").tolist()[4] == 0


def test_a_groups_rows_come_in_corpus_order_found_by_binary_search(tmp_path, monkeypatch):
    monkeypatch.setattr(lines_module, "BATCH_ROWS", 3)
    groups = ["b", "a", "", "b", "c", "a", "", "b"]
    rows = [{**_rows(1)[0], "id": f"l{i}", "group": group} for i, group in enumerate(groups)]
    write_lines(tmp_path / LINES_FILE, rows)
    table = Lines(tmp_path / LINES_FILE)
    assert len(table.batches) == 3 and table.numbers(GROUP_ORDER).tolist() == [2, 6, 1, 5, 0, 3, 7, 4]
    found = {group: table.group_rows(group).tolist() for group in ("a", "b", "c", "", "nowhere", "0", "d")}
    assert found == {"a": [1, 5], "b": [0, 3, 7], "c": [4], "": [], "nowhere": [], "0": [], "d": []}


def test_a_file_of_other_columns_is_refused(tmp_path):
    path = tmp_path / LINES_FILE
    with pa.ipc.new_file(str(path), pa.schema([("text", pa.string())])) as writer:
        writer.write_table(pa.table({"text": ["空山新雨后"]}))
    with pytest.raises(pa.ArrowInvalid, match=r"columns \['text'\], expected"):
        Lines(path)
