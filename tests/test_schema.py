"""The declared row types: readers check and default, the one writer follows the declaration and json.dumps."""

from __future__ import annotations

import json

import pytest

from st_poetry.core.errors import UserError
from st_poetry.core.files import write_jsonl
from st_poetry.core.schema import CORPUS, MINED, PAIR, mined_row, read_split

# JSON's awkward characters: quotes, backslashes, control characters, a line separator, non-BMP text
AWKWARD = ['他说"好"', "a\\b", "line\nbreak\ttab", "\u2028sep", "𠀀字", "“明月”"]


def _dumps(row) -> str:
    return json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"


@pytest.mark.parametrize("text", AWKWARD)
def test_the_writer_writes_compact_json_and_reads_back_the_same_row(tmp_path, text):
    pair = {"anchor": text, "positive": "床前明月光", "negatives": [text, "霜"], "source": "ccpm", "group": text}
    corpus = {"id": "c7", "text": text, "title": text, "author": "李白", "dynasty": "", "group": "g"}
    mined = mined_row(text, "床前明月光", [text, None])
    for row_type, rows in ((PAIR, [pair, pair]), (CORPUS, [corpus]), (MINED, [mined, mined])):
        assert row_type.line(rows[0]) == _dumps(rows[0])
        path = tmp_path / f"{row_type.name}.jsonl"
        row_type.write(path, rows)
        assert path.read_text(encoding="utf-8") == "".join(map(_dumps, rows))
        assert row_type.read(path) == rows


def test_the_writer_puts_the_declared_fields_in_order_and_defaults_the_optional_ones():
    line = PAIR.line({"group": "g", "positive": "床前明月光", "anchor": "明亮的月光", "extra": 1})
    assert line == '{"anchor":"明亮的月光","positive":"床前明月光","negatives":[],"source":"","group":"g"}\n'
    assert json.loads(CORPUS.line({"text": "明月"}, index=4))["id"] == "c4"


def test_readers_fill_optional_fields_and_writers_round_trip(tmp_path):
    path = tmp_path / "corpus.jsonl"
    write_jsonl(path, [{"text": "床前明月光", "title": None}, {"id": "x", "text": "疑是地上霜", "author": "李白"}])
    rows = CORPUS.read(path)
    assert rows[0] == {"id": "c0", "text": "床前明月光", "title": "", "author": "", "dynasty": "", "group": ""}
    assert rows[1]["id"] == "x" and rows[1]["author"] == "李白"
    CORPUS.write(tmp_path / "again.jsonl", rows)
    assert CORPUS.read(tmp_path / "again.jsonl") == rows

    write_jsonl(path, [{"anchor": "明亮的月光", "positive": "床前明月光", "extra": 1}])
    assert PAIR.read(path) == [
        {"anchor": "明亮的月光", "positive": "床前明月光", "negatives": [], "source": "", "group": ""}
    ]


@pytest.mark.parametrize(
    ("row_type", "rows", "message"),
    [
        (PAIR, [{"anchor": "a"}], r":1: 'positive' is missing"),
        (PAIR, [{"anchor": "a", "positive": "  "}], r":1: 'positive' is not a non-empty text"),
        (PAIR, [{"anchor": "a", "positive": "b", "negatives": "c"}], r":1: 'negatives' is not a list of texts"),
        (PAIR, [{"anchor": "a", "positive": "b", "group": 3}], r":1: 'group' is not a string"),
        (PAIR, ["a text"], r":1: expected an object with non-empty anchor, positive \(a prepared row"),
        (MINED, [{"anchor": "a", "positive": "b", "negative_1": 5}], r":1: 'negative_1' is not a text or null"),
        (CORPUS, [{"text": "a"}, {"id": "c0", "text": "b"}], r":2: id 'c0' repeats line 1"),
    ],
)
def test_readers_name_file_line_and_field(tmp_path, row_type, rows, message):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, rows)
    with pytest.raises(UserError, match=r"rows\.jsonl" + message):
        row_type.read(path)


def test_read_split_recognises_the_row_type(tmp_path):
    path = tmp_path / "train.jsonl"
    MINED.write(path, [mined_row("a", "b", ["c", None]), mined_row("d", "e", [None, None])])
    split = read_split(path)
    assert split.type is MINED and [split.type.negatives(row) for row in split.rows] == [["c"], []]
    PAIR.write(path, [{"anchor": "a", "positive": "b", "negatives": ["c"]}])
    split = read_split(path)
    assert split.type is PAIR and split.type.negatives(split.rows[0]) == ["c"]

    # a stage that reads prepared rows refuses mined ones, and a file mixing both is an error
    MINED.write(path, [mined_row("a", "b", ["c"])])
    with pytest.raises(UserError, match=r"holds mined rows \(`just mine`\); expected prepared rows"):
        read_split(path, accept=(PAIR,))
    write_jsonl(path, [mined_row("a", "b", ["c"]), {"anchor": "a", "positive": "b", "negatives": []}])
    with pytest.raises(UserError, match=r"train\.jsonl:2: a prepared row among mined rows"):
        read_split(path)
