"""The chinese-poetry collection (github chinese-poetry/chinese-poetry, MIT) as poems: `just prepare --poems`.

A file is recognised by its shape, not its name:

- a list of poems with `paragraphs` and `title` or `rhythmic` (a ci's tune names it): quantangshi/poet.*,
  songci/ci.song.*, 宋词三百首, yuanqu, wudaishici;
- a list of poems with `content` instead of `paragraphs`: shijing, chuci;
- one object whose `content` holds sections of poems (`chapter`, `author`, `paragraphs`): mengxue's 唐诗三百首
  and 千家诗;
- author lists (`name` with `desc` or `description`) and an intro (`title`, `desc`): no poems, counted and passed.

Anything else, or an empty list of poems or sections, is a one-line error naming the file. Title, author and
lines are converted to simplified script with OpenCC (t2s), once, here, so the corpus is in the script of the
queries and CCPM. Each paragraph is split into sentences ending in 。！？； (usually a couplet), the unit of the
works pairs. The dynasty is the record's (`dynasty`, or an author written （唐）孟浩然), else its file's
(COLLECTION), else unknown (counted).

`Linker` ties the lines of the other inputs (works, CCPM, FlagEmbedding) to the poem they come from.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import opencc

from st_poetry.core.errors import UserError
from st_poetry.core.files import decode_text
from st_poetry.data.records import Parsed, Skip, clean, normalize

# (folder/file pattern, dynasty). Files are read in this order, the oldest collections first and the anthologies
# (whose poems are already in the collections above them) last, so a line found in several poems belongs to the
# earliest poem that has it.
COLLECTION = (
    ("shijing/*.json", "先秦"),
    ("chuci/*.json", "先秦"),  # 屈原 and 宋玉, with some Han imitations
    ("quantangshi/poet.tang.*.json", "唐"),
    ("huajianji/*.json", "五代十国"),
    ("nantang/*.json", "五代十国"),
    ("quantangshi/poet.song.*.json", "宋"),
    ("songci/ci.song.*.json", "宋"),
    ("yuanqu/*.json", "元"),
    ("songci/宋词三百首.json", "宋"),
    ("mengxue/tangshisanbaishou.json", "唐"),
    ("mengxue/*.json", ""),  # 千家诗: each author carries its dynasty, （宋）程颢
)
DYNASTY_NAMES = {"tang": "唐", "song": "宋", "yuan": "元", "ming": "明", "qing": "清"}
UNKNOWN_DYNASTY = "unknown dynasty"
CONVERTED = "converted to simplified"
NO_POEMS = "files without poems (author lists, intro)"
_SENTENCE = re.compile(r"[^。！？；!?;]+(?:[。！？；!?;]+[”’」』）)]*)?")
_CLAUSE_END = re.compile(r"(?<=[，、：,:。！？；!?;])")
_AUTHOR_DYNASTY = re.compile(r"[（(]([^）)]{1,4})[）)]\s*")
_T2S = opencc.OpenCC("t2s")


def to_simplified(text: str) -> str:
    return _T2S.convert(text)


def sentences(text: str) -> list[str]:
    """Split after 。！？； (a closing quote or bracket stays with its sentence); pieces without a character go."""
    return [piece for piece in map(str.strip, _SENTENCE.findall(text)) if normalize(piece)]


def reading_order(path: Path) -> tuple[int, str]:
    """The rank of a file in COLLECTION (unknown files after all of them), then its path."""
    name = f"{path.parent.name}/{path.name}"
    rank = next((i for i, (pattern, _) in enumerate(COLLECTION) if fnmatch.fnmatch(name, pattern)), len(COLLECTION))
    return rank, str(path)


def file_dynasty(path: Path) -> str:
    rank, _ = reading_order(path)
    return COLLECTION[rank][1] if rank < len(COLLECTION) else ""


def _load(path: Path) -> Any:
    try:
        return json.loads(decode_text(path.read_bytes(), path))
    except json.JSONDecodeError as error:
        raise UserError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None


def _is_poem(value: Any) -> bool:
    return isinstance(value, dict) and ("paragraphs" in value or "content" in value)


def _is_author(value: Any) -> bool:
    return isinstance(value, dict) and "name" in value and ("desc" in value or "description" in value)


def read_file(path: Path, notes: dict[str, int]) -> Iterator[tuple[int, Any]]:
    """Yield (number, record) for each poem of a file, in file order; an author list or intro counts in `notes`."""
    data = _load(path)
    dynasty = file_dynasty(path)
    if isinstance(data, list) and (not data or any(map(_is_poem, data))):
        records = data
    elif isinstance(data, dict) and isinstance(data.get("content"), list) and all(map(_is_section, data["content"])):
        records = [part for section in data["content"] for poem in section["content"] for part in _parts(poem)]
    elif (isinstance(data, list) and data and all(map(_is_author, data))) or (
        isinstance(data, dict) and set(data) == {"title", "desc"}
    ):
        notes[NO_POEMS] = notes.get(NO_POEMS, 0) + 1
        return
    else:
        raise UserError(
            f"{path}: not a chinese-poetry file (expected a list of poems with paragraphs or content, "
            "a 蒙学 anthology of sections, an author list or an intro)"
        )
    if not records:
        raise UserError(f"{path}: no poems in it (an empty list of poems or sections): remove it or give another file")
    for number, record in enumerate(records):
        if dynasty and isinstance(record, dict):
            record.setdefault("dynasty", dynasty)
        yield number, record


def _is_section(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("content"), list)


def _parts(poem: Any) -> list[Any]:
    """A 千家诗 series (paragraphs holding {subchapter, paragraphs} parts) as one poem per part."""
    parts = poem.get("paragraphs") if isinstance(poem, dict) else None
    if not parts or not isinstance(parts, list) or not all(isinstance(part, dict) for part in parts):
        return [poem]
    return [{**poem, "subchapter": part.get("subchapter"), "paragraphs": part.get("paragraphs")} for part in parts]


def _field(record: dict, *keys: str) -> str:
    """The first of `keys` that holds a text, else ""."""
    return next((value for value in map(record.get, keys) if isinstance(value, str)), "")


def parse_poem(record: dict, file: str, number: int) -> Parsed:
    """One poem: its sentences (simplified) as corpus lines, with title, author and dynasty; no pairs."""
    paragraphs = record.get("paragraphs", record.get("content"))
    if paragraphs is None:
        raise Skip("missing paragraphs")
    if isinstance(paragraphs, str):
        raise Skip("paragraphs is a text, not a list")
    if not isinstance(paragraphs, list) or not all(isinstance(p, str) for p in paragraphs):
        raise Skip("paragraphs is not a list of texts")
    title = _field(record, "title", "rhythmic", "chapter")
    if isinstance(record.get("subchapter"), str):
        title += f"·{record['subchapter']}"
    author, dynasty = _field(record, "author"), DYNASTY_NAMES.get(_field(record, "dynasty"), _field(record, "dynasty"))
    if prefix := _AUTHOR_DYNASTY.match(author):
        author, dynasty = author[prefix.end() :], prefix.group(1)
    original = "\n".join(part.replace("\n", " ") for part in (title, author, dynasty, *paragraphs))
    converted = to_simplified(original)
    title, author, dynasty, *paragraphs = converted.split("\n")
    lines = [line for paragraph in paragraphs for line in sentences(clean(paragraph))]
    if not lines:
        raise Skip("no text in paragraphs")
    notes = (CONVERTED,) if converted != original else ()
    notes += () if dynasty else (UNKNOWN_DYNASTY,)
    record_id = record.get("id")
    return Parsed(
        group=f"{file}:{f'#{number}' if record_id is None else record_id}",
        pairs=[],
        texts=list(dict.fromkeys(lines)),
        meta=(title, author, dynasty),
        notes=notes,
    )


class Link(NamedTuple):
    """The poem a line links to: its group, and what its `Linker.offer` was given with it."""

    group: str
    payload: Any


class Linker:
    """Finds the chinese-poetry poem of the other inputs' lines (works, CCPM choices, FlagEmbedding texts).

    A line links when, ignoring punctuation and script, it is a whole line of a poem or one clause of one (CCPM's
    choices are single clauses such as 空山新雨后). Poems are offered in reading order and the first one that
    holds a line keeps it. Call `want` for every line to link before the first `offer`.
    """

    def __init__(self) -> None:
        self.keys: dict[str, str] = {}  # text -> its key (simplified, no punctuation)
        self.found: dict[str, Link] = {}  # key -> the first poem that has it
        self.by_clause: set[str] = set()  # keys found as a clause, not a whole line
        self._wanted: set[str] | None = None

    def want(self, text: str) -> None:
        if text not in self.keys:
            self.keys[text] = normalize(to_simplified(text))

    def offer(self, lines: list[str], group: str, payload: Any) -> None:
        """Offer one poem's lines; `payload` (prepare: its corpus fields) is handed back for each line it links."""
        if self._wanted is None:
            self._wanted = set(self.keys.values()) - {""}
        for line in lines:
            clauses = [key for key in map(normalize, _CLAUSE_END.split(line)) if key]
            whole = "".join(clauses)
            for key in (whole, *clauses):
                if key in self._wanted and key not in self.found:
                    self.found[key] = Link(group, payload)
                    if key != whole:
                        self.by_clause.add(key)

    def link(self, text: str) -> Link | None:
        """The poem that holds `text`, or None."""
        key = self.keys.get(text)
        return None if key is None else self.found.get(key)
