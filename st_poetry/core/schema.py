"""The rows the stages hand each other, declared once: field names, types, required or optional, in file order.

- PAIR: `just prepare`'s train.jsonl / eval.jsonl, `{"anchor", "positive", "negatives", "source", "group"}`;
- MINED: `just mine`'s train.jsonl / eval.jsonl, `{"anchor", "positive", "negative_1", ..., "negative_n"}`
  (`null` where a row ran short); the training rows have the same shape, without nulls;
- CORPUS: corpus.jsonl of both, `{"id", "text", "title", "author", "dynasty", "group"}`.

Each row type has one reader (checks every row, names file:line, fills optional fields with their default)
and one writer (the declared fields in declared order, one compact UTF-8 JSON object a line, by orjson: fast
enough for prepare's millions of rows, docs/BENCHMARKS.md#prepare). A split file's kind is recognised from its
rows (`read_split`), so no stage sniffs another stage's marker file. Stdlib and orjson only, so the light
`prepare` stage can use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from st_poetry.core.errors import UserError
from st_poetry.core.files import read_jsonl

SPLITS = ("train", "eval")

# Field types: what a value must be.
TEXT = "text"  # a string with something besides whitespace
STRING = "string"  # any string, "" included
TEXTS = "texts"  # a list of strings
TEXT_OR_NULL = "text or null"  # a short mined row's missing negatives are null

_VALID: dict[str, Callable[[Any], bool]] = {
    TEXT: lambda value: isinstance(value, str) and bool(value.strip()),
    STRING: lambda value: isinstance(value, str),
    TEXTS: lambda value: isinstance(value, list) and all(isinstance(item, str) for item in value),
    TEXT_OR_NULL: lambda value: value is None or (isinstance(value, str) and bool(value.strip())),
}
_DESCRIBED = {TEXT: "a non-empty text", STRING: "a string", TEXTS: "a list of texts", TEXT_OR_NULL: "a text or null"}


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    required: bool = True
    # An optional field's value when a row lacks it (or holds null); a callable gets the row's 0-based index.
    default: Any = None
    unique: bool = False  # no two rows of a file share the value

    def default_for(self, index: int) -> Any:
        if callable(self.default):
            return self.default(index)
        return list(self.default) if isinstance(self.default, tuple) else self.default


@dataclass(frozen=True)
class RowType:
    """One kind of JSONL row: its fields in file order, and `numbered` columns (negative_1..n) after them."""

    name: str
    written_by: str  # the stage, for messages
    fields: tuple[Field, ...]
    numbered: Field | None = None  # a Field whose name is the prefix: negative -> negative_1, negative_2, ...

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(field.name for field in self.fields)

    def numbered_names(self, count: int) -> list[str]:
        return [f"{self.numbered.name}_{index}" for index in range(1, count + 1)] if self.numbered else []

    def describe(self) -> str:
        required = ", ".join(field.name for field in self.fields if field.required)
        return f"an object with non-empty {required} (a {self.name} row, as `{self.written_by}` writes it)"

    # ---- reading

    def check(self, row: Any, where: str, index: int) -> dict[str, Any]:
        """The row with its declared fields only (optional ones defaulted); anything else names `where`."""
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected {self.describe()}")
        checked: dict[str, Any] = {}
        for field in self.fields:
            value = row.get(field.name)
            if value is None and not field.required:
                value = field.default_for(index)
            elif not _VALID[field.type](value):
                problem = "missing" if value is None else f"not {_DESCRIBED[field.type]}"
                raise UserError(f"{where}: {field.name!r} is {problem}: expected {self.describe()}")
            checked[field.name] = value
        if self.numbered:
            for name in self.numbered_names(len(row)):
                if name not in row:
                    break
                if not _VALID[self.numbered.type](row[name]):
                    raise UserError(f"{where}: {name!r} is not {_DESCRIBED[self.numbered.type]}")
                checked[name] = row[name]
        return checked

    def read(self, path: str | Path) -> list[dict[str, Any]]:
        """Every row of a file of this type, checked; a missing file or a malformed row names the file and line."""
        numbers, rows = [], []
        for index, (number, row) in enumerate(read_jsonl(path)):
            numbers.append(number)
            rows.append(self.check(row, f"{path}:{number}", index))
        for field in self.fields:
            if field.unique:
                first: dict[Any, int] = {}
                for number, row in zip(numbers, rows, strict=True):
                    if first.setdefault(row[field.name], number) != number:
                        value = row[field.name]
                        raise UserError(f"{path}:{number}: {field.name} {value!r} repeats line {first[value]}")
        return rows

    def negatives(self, row: dict[str, Any]) -> list[str]:
        """A checked row's negatives, in order, without a short row's nulls."""
        if self.numbered:
            return [row[name] for name in self.numbered_names(len(row)) if name in row and row[name] is not None]
        return list(row.get("negatives", []))

    # ---- writing

    def ordered(self, row: dict[str, Any], index: int = 0) -> dict[str, Any]:
        """Row `index` of a file as written: declared fields in order (optional ones defaulted), then numbered ones.

        A row that is that already (every declared field, in order, none null: prepare's) is used as it is.
        """
        if tuple(row) == self.names and None not in row.values():
            return row
        ordered = {
            field.name: row[field.name]
            if field.required or row.get(field.name) is not None
            else field.default_for(index)
            for field in self.fields
        }
        ordered.update((name, row[name]) for name in self.numbered_names(len(row)) if name in row)
        return ordered

    def line(self, row: dict[str, Any], index: int = 0) -> str:
        """Row `index` of a file as its line (`ordered`), as `json.dumps(_, ensure_ascii=False, separators=(",", ":"))`
        would write it."""
        return orjson.dumps(self.ordered(row, index), option=orjson.OPT_APPEND_NEWLINE).decode()

    def write(self, path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
        with open(path, "wb") as handle:
            handle.writelines(
                orjson.dumps(self.ordered(row, index), option=orjson.OPT_APPEND_NEWLINE)
                for index, row in enumerate(rows)
            )


PAIR = RowType(
    "prepared",
    "just prepare",
    (
        Field("anchor", TEXT),
        Field("positive", TEXT),
        Field("negatives", TEXTS, required=False, default=()),
        Field("source", STRING, required=False, default=""),
        Field("group", STRING, required=False, default=""),
    ),
)
MINED = RowType(
    "mined", "just mine", (Field("anchor", TEXT), Field("positive", TEXT)), numbered=Field("negative", TEXT_OR_NULL)
)
CORPUS = RowType(
    "corpus",
    "just prepare",
    (
        Field("id", STRING, required=False, default=lambda index: f"c{index}", unique=True),  # as prepare numbers
        Field("text", TEXT),
        Field("title", STRING, required=False, default=""),
        Field("author", STRING, required=False, default=""),
        Field("dynasty", STRING, required=False, default=""),
        Field("group", STRING, required=False, default=""),
    ),
)


def mined_row(anchor: str, positive: str, negatives: Sequence[str | None]) -> dict[str, Any]:
    """A MINED row (also the trainer's row: anchor, positive, negative_1..k)."""
    return {
        "anchor": anchor,
        "positive": positive,
        **dict(zip(MINED.numbered_names(len(negatives)), negatives, strict=True)),
    }


def row_type_of(row: Any) -> RowType:
    """PAIR when a row has `negatives`, MINED when it has `negative_1`; a row with neither has no negatives and
    reads the same either way (PAIR)."""
    if isinstance(row, dict) and MINED.numbered_names(1)[0] in row:
        return MINED
    return PAIR


@dataclass
class Split:
    """A train or eval file: the row type it holds and its checked rows."""

    type: RowType
    rows: list[dict[str, Any]]


def read_split(path: str | Path, accept: Sequence[RowType] = (PAIR, MINED)) -> Split:
    """A train/eval file, its row type recognised from its first row; every row must be of that type."""
    row_type, checked = accept[0], []  # an empty file has no rows of any type
    for index, (number, row) in enumerate(read_jsonl(path)):
        if index == 0:
            row_type = row_type_of(row)
            if row_type not in accept:
                wanted = " or ".join(f"{t.name} rows (`{t.written_by}`)" for t in accept)
                raise UserError(f"{path} holds {row_type.name} rows (`{row_type.written_by}`); expected {wanted}")
        elif row_type_of(row) is not row_type:
            raise UserError(f"{path}:{number}: a {row_type_of(row).name} row among {row_type.name} rows")
        checked.append(row_type.check(row, f"{path}:{number}", index))
    return Split(row_type, checked)


def require_files(folder: str | Path, names: Sequence[str], what: str) -> Path:
    """`folder` if it holds every file in `names`; else one line saying which is missing and what --data wants."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"data folder not found: {folder}: --data must be {what}")
    for name in names:
        if not (folder / name).is_file():
            raise UserError(f"{folder / name} is missing: --data must be {what}")
    return folder
