"""What every raw-input reader shares: the parsed-record type, the skip signal and the text rules.

Stdlib only, so `just prepare` stays light; `st_poetry.data.prepare` (works, CCPM, FlagEmbedding) and
`st_poetry.data.poems` (the chinese-poetry collection) both build on it, and `just mine` compares lines with
`normalize` too.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from dataclasses import dataclass


class Skip(Exception):
    """A record that cannot be used; the message is the reason counted in stats.json."""


@dataclass
class Parsed:
    """What one input record contributes."""

    group: str
    pairs: list[tuple[str, str]]  # (anchor, positive)
    texts: list[str]  # candidate-corpus lines
    negatives: tuple[str, ...] = ()  # given hard negatives, shared by the record's pairs
    meta: tuple[str, str, str] = ("", "", "")  # title, author, dynasty
    unpaired: str | None = None  # why a kept record made no pairs (its lines still join the corpus)
    notes: tuple[str, ...] = ()  # what is worth counting about a kept record (e.g. converted to simplified)


def _format_characters() -> re.Pattern[str]:
    """Any invisible format character (Unicode category Cf: zero-width space, byte-order mark, soft hyphen...),
    never part of a line. Written as ranges: a class of ranges matches several times faster than a list."""
    codes = {code for code in range(sys.maxunicode + 1) if unicodedata.category(chr(code)) == "Cf"}
    starts = sorted(code for code in codes if code - 1 not in codes)
    ends = sorted(code for code in codes if code + 1 not in codes)
    return re.compile("[" + "".join(f"{chr(a)}-{chr(b)}" for a, b in zip(starts, ends, strict=True)) + "]")


_FORMAT = _format_characters()


def clean(text: str) -> str:
    """Drop quote marks (a quotation often opens on one line and closes on another), invisible format characters
    and outer whitespace: a text of nothing else is empty, and is skipped like any empty one."""
    return _FORMAT.sub("", text.replace("“", "").replace("”", "")).strip()


def normalize(text: str) -> str:
    """The text with punctuation, whitespace and format characters removed (after NFKC), to compare lines that
    differ only there."""
    text = _FORMAT.sub("", unicodedata.normalize("NFKC", text))
    return "".join(ch for ch in text if not ch.isspace() and unicodedata.category(ch)[0] not in "PZ")
