"""Raw poetry data -> (query, positive) pairs, a grouped train/eval split and a candidate corpus.

    just prepare            # works, CCPM train and chinese-poetry under RAW_DATA (default data/raw)
    st-poetry prepare --works raw/works/ --ccpm ccpm/train.jsonl --ccpm-eval ccpm/valid.jsonl

Four input formats, any mix, each given as files or folders:

- chinese-poetry-and-prose `works*.json` (a JSON array): Content and Translation are split into lines and
  aligned one to one, anchor = the modern-Chinese line, positive = the poem line;
- CCPM `.jsonl` (translation, choices, answer): the correct choice is the positive, the others are given negatives;
- FlagEmbedding `.jsonl` (query, pos, neg): one pair per positive, `neg` as given negatives;
- the chinese-poetry collection (`--poems`, read by `st_poetry.data.poems`): corpus lines only, in simplified script;
  the other inputs' lines are linked to the poems they come from, and a linked pair takes its poem's group.

The split is by group (a poem, a CCPM or FlagEmbedding record), decided by a seeded hash of the group id: the
same inputs always give the same files, and adding a file does not move the groups already there (group ids:
`input_names`; adding --poems moves the linked pairs to their poem's group). This module is stdlib + tqdm +
OpenCC + orjson only (no torch), so the stage takes seconds to minutes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tqdm import tqdm

from st_poetry.core.config import PrepareConfig
from st_poetry.core.errors import UserError, warn
from st_poetry.core.files import atomic_output_dir, decode_text, read_jsonl, write_json
from st_poetry.core.log import get_logger, progress_off
from st_poetry.core.schema import CORPUS, PAIR
from st_poetry.core.tables import format_table
from st_poetry.data import poems
from st_poetry.data.records import Parsed, Skip, clean

logger = get_logger(__name__)
MARKER = PrepareConfig.MARKER
EMPTY_TRANSLATION = "empty translation"  # a CCPM record with nothing to match: skipped, not an error
_SECTION = re.compile(r"【[^】]*】")  # a whole line like 【其一】 heads a poem in a series; it is no verse
_WHITESPACE = re.compile(r"[ \t\r\n]*")


@dataclass
class SourceStats:
    """Counts for one input format; records_read == records_kept + sum(skipped.values())."""

    files: int = 0
    records_read: int = 0
    records_kept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    kept_without_pairs: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)  # about kept records and files (e.g. converted script)
    pairs_made: int = 0
    duplicate_pairs_removed: int = 0
    eval_pairs_dropped_as_leak: int = 0
    train_pairs: int = 0
    eval_pairs: int = 0
    first_skipped: dict[str, str] = field(default_factory=dict)  # reason -> where to find an example

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        self.first_skipped.setdefault(reason, where)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # asdict() mangles Counters

    def __add__(self, other: SourceStats) -> SourceStats:
        total = SourceStats()
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            setattr(total, f.name, {**theirs, **mine} if f.name == "first_skipped" else mine + theirs)
        return total


# ---------------------------------------------------------------------------------------------------------
# Cleaning and the three record formats


def clean_lines(text: str) -> list[str]:
    """Split on line breaks (\\r\\n or \\n) and clean; drop empty lines and section headers like 【其一】."""
    lines = map(clean, text.splitlines())
    return [line for line in lines if line and not (line[0] == "【" and _SECTION.fullmatch(line))]


def _require(record: dict, *keys: str) -> None:
    for key in keys:
        if record.get(key) is None:
            raise Skip(f"missing {key}")


def _text(record: dict, key: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise Skip(f"{key} is not a text")
    return value


def _texts(record: dict, key: str) -> list[str]:
    """A list of texts, cleaned, empty ones dropped."""
    values = record.get(key) or []
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise Skip(f"{key} is not a list of texts")
    return [text for text in map(clean, values) if text]


def parse_works(record: dict, file: str, index: int, kinds: frozenset[str]) -> Parsed:
    _require(record, "Kind", "Content")
    if _text(record, "Kind") not in kinds:
        raise Skip("Kind not selected")
    lines = clean_lines(_text(record, "Content"))
    if not lines:
        raise Skip("empty Content")
    translation = record.get("Translation")
    translations = clean_lines(translation) if isinstance(translation, str) else []
    unpaired = None
    if not translations:
        unpaired = "no Translation"
    elif len(translations) != len(lines):
        unpaired = "line counts differ"
    meta = tuple(value if isinstance(value, str) else "" for value in map(record.get, ("Title", "Author", "Dynasty")))
    record_id = record.get("Id")
    return Parsed(
        group=f"{file}:{f'#{index}' if record_id is None else record_id}",
        pairs=[] if unpaired else list(zip(translations, lines, strict=True)),
        texts=lines,
        meta=meta,
        unpaired=unpaired,
    )


def parse_ccpm(record: dict, file: str, number: int) -> Parsed:
    _require(record, "translation", "choices", "answer")
    translation = clean(_text(record, "translation"))
    choices = record["choices"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise Skip("choices is not a list of texts")
    choices = [clean(choice) for choice in choices]
    answer = record["answer"]
    if type(answer) is not int or not 0 <= answer < len(choices):
        raise Skip("answer out of range")
    if not translation:
        raise Skip(EMPTY_TRANSLATION)
    if not all(choices):
        raise Skip("empty choice")
    positive = choices[answer]
    negatives = tuple(dict.fromkeys(choice for choice in choices if choice != positive))
    return Parsed(group=f"{file}:{number}", pairs=[(translation, positive)], texts=choices, negatives=negatives)


def parse_flagembedding(record: dict, file: str, number: int) -> Parsed:
    _require(record, "query", "pos")
    query = clean(_text(record, "query"))
    positives, negatives = _texts(record, "pos"), _texts(record, "neg")
    if not query:
        raise Skip("empty query")
    if not positives:
        raise Skip("no non-empty pos")
    return Parsed(
        group=f"{file}:{number}",
        pairs=[(query, positive) for positive in dict.fromkeys(positives)],
        texts=positives + negatives,
        negatives=tuple(dict.fromkeys(text for text in negatives if text not in positives)),
    )


# ---------------------------------------------------------------------------------------------------------
# Reading


def read_json_array(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (index, record) from a JSON array file, decoding one record at a time.

    The text is read at once, but only one record at a time becomes Python objects: a million-record file
    needs far less memory than the full `json.load` tree would.
    """
    text = decode_text(path.read_bytes(), path)
    decoder = json.JSONDecoder()
    position = _WHITESPACE.match(text).end()
    if not text.startswith("[", position):
        raise UserError(f"{path}: not a JSON array of records (a works*.json file starts with '[')")
    position = _WHITESPACE.match(text, position + 1).end()
    index = 0
    while not text.startswith("]", position):
        try:
            record, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}:{error.lineno}: record {index}: not valid JSON ({error.msg})") from None
        yield index, record
        index += 1
        position = _WHITESPACE.match(text, position).end()
        if text.startswith(",", position):
            position = _WHITESPACE.match(text, position + 1).end()
        elif not text.startswith("]", position):
            line = text.count("\n", 0, position) + 1
            raise UserError(f"{path}:{line}: not valid JSON (expected ',' or ']' after record {index - 1})")
    if _WHITESPACE.match(text, position + 1).end() != len(text):
        raise UserError(f"{path}: not valid JSON (extra data after the closing ']')")


@dataclass(frozen=True)
class Input:
    """One input file and how to read it."""

    source: str  # works | ccpm | flagembedding | poems
    path: Path
    eval_only: bool
    name: str  # the file in its records' group ids (input_names)


def _files(paths: list[str], pattern: str, flag: str) -> list[tuple[Path, str]]:
    """(file, the path given for it): files as given; a folder stands for its `pattern` files, sorted so the
    order never depends on the disk."""
    files = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(path.glob(pattern))
            if not found:
                raise UserError(f"--{flag}: no {pattern} files in {path}")
            files += [(file, given) for file in found]
        elif path.is_file():
            files.append((path, given))
        else:
            raise UserError(f"--{flag}: no such file or folder: {path}")
    return files


def input_names(paths: list[Path]) -> list[str]:
    """Each file's name in group ids: its file name, or as many of its folders as tell it from another input
    file of the same name (`a/train.jsonl`, `b/train.jsonl`).

    Group ids must be unique per input file, or the same-poem filter and the split would take two files'
    records for one; and stable across machines, so no absolute path. A file whose name no other input shares
    keeps its plain name, the ids (and the split) of earlier versions.
    """
    parts = [path.resolve().parts for path in paths]
    by_name: dict[str, set[tuple[str, ...]]] = {}
    for these in parts:
        by_name.setdefault(these[-1], set()).add(these)
    names = []
    for these in parts:
        others = by_name[these[-1]] - {these}
        depth = 1
        while any(other[-depth:] == these[-depth:] for other in others):
            depth += 1
        names.append("/".join(these[-depth:]))
    return names


def resolve_inputs(config: PrepareConfig) -> list[Input]:
    groups = [
        ("works", config.works, "works*.json", "works", False),
        ("ccpm", config.ccpm, "*.jsonl", "ccpm", False),
        ("ccpm", config.ccpm_eval, "*.jsonl", "ccpm-eval", True),
        ("flagembedding", config.flagembedding, "*.jsonl", "flagembedding", False),
        ("flagembedding", config.flagembedding_eval, "*.jsonl", "flagembedding-eval", True),
    ]
    found = [
        (source, path, eval_only, f"--{flag} {given}")
        for source, paths, pattern, flag, eval_only in groups
        for path, given in _files(paths, pattern, flag)
    ]
    # the poems come last: the lines of the inputs above are linked to them as they are read
    found += [
        ("poems", path, False, f"--poems {given}")
        for path, given in sorted(
            _files(config.poems, "**/*.json", "poems"), key=lambda item: poems.reading_order(item[0])
        )
    ]
    # A file read twice would count twice, and in two roles (train and eval-only) the first would silently win.
    first: dict[Path, str] = {}
    for _, path, _, given in found:
        if (key := path.resolve()) in first:
            raise UserError(
                f"{path} is given twice, by {first[key]} and by {given}: each input file is read once, in one "
                "role (train or eval-only); name it once"
            )
        first[key] = given
    names = input_names([path for _, path, _, _ in found])
    return [
        Input(source, path, eval_only, name) for (source, path, eval_only, _), name in zip(found, names, strict=True)
    ]


def read_records(
    inputs: list[Input], kinds: frozenset[str], stats: dict[str, SourceStats]
) -> Iterator[tuple[Input, Parsed]]:
    """Parse every record of every input, counting what is read, kept and skipped (and why) into `stats`."""
    parsers: dict[str, Callable[[dict, str, int], Parsed]] = {
        "works": functools.partial(parse_works, kinds=kinds),
        "ccpm": parse_ccpm,
        "flagembedding": parse_flagembedding,
        "poems": poems.parse_poem,
    }
    with tqdm(desc="reading", unit=" records", unit_scale=True, disable=progress_off()) as bar:
        for item in inputs:
            logger.debug(f"reading {item.path} as {item.source}" + " (eval only)" * item.eval_only)
            counts = stats.setdefault(item.source, SourceStats())
            counts.files += 1
            bar.set_postfix_str(item.path.name)
            parse, label = parsers[item.source], "line" if item.path.suffix == ".jsonl" else "record"
            if item.source == "poems":
                records = poems.read_file(item.path, counts.notes)
            else:
                records = read_json_array(item.path) if item.source == "works" else read_jsonl(item.path)
            for number, record in records:
                if not isinstance(record, dict):
                    raise UserError(f"{item.path} {label} {number}: not a JSON object")
                counts.records_read += 1
                bar.update()
                try:
                    parsed = parse(record, item.name, number)
                except Skip as skip:
                    counts.skip(str(skip), f"{item.path} {label} {number}")
                    continue
                counts.records_kept += 1
                if parsed.unpaired:
                    counts.kept_without_pairs[parsed.unpaired] += 1
                counts.notes.update(parsed.notes)
                yield item, parsed


# ---------------------------------------------------------------------------------------------------------
# Split, deduplicate, write


class CorpusMeta(NamedTuple):
    """A corpus line's fields besides id and text (schema.CORPUS), shared by every line of its record."""

    title: str
    author: str
    dynasty: str
    group: str


class PairOrigin(NamedTuple):
    """Where a pair comes from: the fields besides anchor and positive (schema.PAIR), shared by its record's
    pairs, and its side of the split."""

    negatives: tuple[str, ...]
    source: str
    group: str
    is_eval: bool


def pair_rows(keys: list[tuple[str, str]], pairs: dict[tuple[str, str], PairOrigin]) -> Iterator[dict[str, Any]]:
    """PAIR rows of the (anchor, positive) `keys`."""
    for anchor, positive in keys:
        origin = pairs[anchor, positive]
        yield {
            "anchor": anchor,
            "positive": positive,
            "negatives": list(origin.negatives),
            "source": origin.source,
            "group": origin.group,
        }


def corpus_rows(corpus: dict[str, CorpusMeta]) -> Iterator[dict[str, Any]]:
    """CORPUS rows, numbered c0, c1, ... in the corpus's order."""
    for index, (text, meta) in enumerate(corpus.items()):
        yield {
            "id": f"c{index}",
            "text": text,
            "title": meta.title,
            "author": meta.author,
            "dynasty": meta.dynasty,
            "group": meta.group,
        }


def is_eval_group(group: str, seed: int, fraction: float) -> bool:
    """A seeded hash of the group id picks its side: stable across runs and independent of the other inputs."""
    digest = hashlib.blake2b(f"{seed}:{group}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def prepare(config: PrepareConfig) -> dict[str, Any]:
    """Read the inputs, link their lines to poems, split by group, deduplicate, and write the four files."""
    start = time.perf_counter()
    inputs = resolve_inputs(config)
    stats: dict[str, SourceStats] = {}
    corpus: dict[str, CorpusMeta] = {}  # text -> its fields; the first occurrence wins
    linker = poems.Linker()
    lines_of: dict[str, list[str]] = {}  # source -> the corpus lines its records gave, repeats included
    paired: list[tuple[Input, Parsed]] = []
    recurring: set[str] = set()  # poem lines found in more than one poem
    for item, parsed in read_records(inputs, frozenset(config.kinds), stats):
        meta = CorpusMeta(*parsed.meta, parsed.group)
        if item.source == "poems":
            linker.offer(parsed.texts, parsed.group, meta)
            for text in parsed.texts:
                if corpus.setdefault(text, meta) is not meta and text not in linker.keys:
                    recurring.add(text)
            continue
        lines_of.setdefault(item.source, []).extend(parsed.texts)
        for text in parsed.texts:
            corpus.setdefault(text, meta)
            if config.poems:
                linker.want(text)
        if parsed.pairs:
            paired.append((item, parsed))
    for text in linker.keys:  # a linked line takes its poem's title, author, dynasty and group
        if found := linker.link(text):
            corpus[text] = found.payload

    pairs: dict[tuple[str, str], PairOrigin] = {}  # (anchor, positive) -> its origin; the first occurrence wins
    for item, parsed in paired:
        counts = stats[item.source]
        counts.pairs_made += len(parsed.pairs)
        # a record whose lines come from a poem takes the poem's group, so one poem is never on both sides
        linked = Counter(found.group for _, positive in parsed.pairs if (found := linker.link(positive)))
        group = linked.most_common(1)[0][0] if linked else parsed.group
        is_eval = item.eval_only or is_eval_group(group, config.seed, config.eval_fraction)
        origin = PairOrigin(parsed.negatives, item.source, group, is_eval)
        for pair in parsed.pairs:
            if pair in pairs:
                counts.duplicate_pairs_removed += 1
            else:
                pairs[pair] = origin
    if not pairs:
        raise UserError("the inputs gave no pairs: " + "; ".join(_why(name, s) for name, s in stats.items()))

    # Famous lines recur across works: an eval positive that is also trained on would flatter the scores.
    train_positives = {positive for (_, positive), origin in pairs.items() if not origin.is_eval}
    train, evaluation = [], []
    for (anchor, positive), origin in pairs.items():
        if not origin.is_eval:
            train.append((anchor, positive))
            stats[origin.source].train_pairs += 1
        elif positive in train_positives:
            stats[origin.source].eval_pairs_dropped_as_leak += 1
        else:
            evaluation.append((anchor, positive))
            stats[origin.source].eval_pairs += 1

    total = sum(stats.values(), SourceStats())
    warnings = [
        f"the {split} split is empty (--eval-fraction {config.eval_fraction}): `just mine` and `just train` need "
        f"{split} pairs; {fix}"
        for split, rows, fix in (
            ("train", train, "lower --eval-fraction, or pass fewer files with --ccpm-eval/--flagembedding-eval"),
            ("eval", evaluation, "raise --eval-fraction, or pass held-out files with --ccpm-eval/--flagembedding-eval"),
        )
        if not rows
    ]
    result = {
        "inputs": [{"source": i.source, "path": str(i.path), "eval_only": i.eval_only} for i in inputs],
        "settings": {"kinds": config.kinds, "eval_fraction": config.eval_fraction, "seed": config.seed},
        "sources": {name: counts.as_dict() for name, counts in stats.items()},
        "total": total.as_dict(),
        "train_pairs": len(train),
        "eval_pairs": len(evaluation),
        "train_groups": len({pairs[key].group for key in train}),
        "eval_groups": len({pairs[key].group for key in evaluation}),
        "corpus_size": len(corpus),
        "warnings": warnings,
    }
    if config.poems:
        result["linking"] = linking_stats(linker, lines_of, pairs)
        result["lines_in_several_poems"] = len(recurring)

    with atomic_output_dir(config.out, MARKER) as tmp:
        PAIR.write(tmp / "train.jsonl", pair_rows(train, pairs))
        PAIR.write(tmp / "eval.jsonl", pair_rows(evaluation, pairs))
        CORPUS.write(tmp / "corpus.jsonl", corpus_rows(corpus))
        write_json(tmp / MARKER, result)
    logger.info(summary(result, config.out, time.perf_counter() - start))
    for message in warnings:
        warn(message)
    return result


def linking_stats(
    linker: poems.Linker, lines_of: dict[str, list[str]], pairs: dict[tuple[str, str], PairOrigin]
) -> dict[str, dict[str, int]]:
    """Per source: how many of its lines (CCPM: choices) and pair positives were linked to a poem."""
    result = {}
    for source, lines in lines_of.items():
        found = [text for text in lines if linker.link(text)]
        positives = [positive for (_, positive), origin in pairs.items() if origin.source == source]
        result[source] = {
            "lines": len(lines),
            "lines_linked": len(found),
            "lines_linked_by_half_line": sum(linker.keys[text] in linker.by_clause for text in found),
            "positives": len(positives),
            "positives_linked": sum(linker.link(positive) is not None for positive in positives),
        }
    return result


def _why(source: str, counts: SourceStats) -> str:
    reasons = counts.skipped + counts.kept_without_pairs
    detail = ", ".join(f"{reason} x{count}" for reason, count in reasons.most_common())
    return f"{source}: {counts.records_read} records read" + (f" ({detail})" if detail else "")


def summary(result: dict[str, Any], out: str, seconds: float) -> str:
    """One screen: per-source counts, the reasons records were skipped, split and corpus sizes."""
    columns = ["records_read", "records_kept", "pairs_made", "duplicate_pairs_removed"]
    columns += ["eval_pairs_dropped_as_leak", "train_pairs", "eval_pairs"]
    headers = ["read", "kept", "pairs", "duplicates", "eval leaks", "train", "eval"]
    table = [[name, *(f"{counts[c]:,}" for c in columns)] for name, counts in result["sources"].items()]
    table.append(["total", *(f"{result['total'][c]:,}" for c in columns)])
    lines = [f"prepared {out} in {seconds:.1f} s", format_table(["source", *headers], table, align="lr")]
    for name, counts in result["sources"].items():
        for reason, count in sorted(counts["skipped"].items(), key=lambda kv: -kv[1]):
            lines.append(f"skipped    {name}: {reason}: {count:,} (e.g. {counts['first_skipped'][reason]})")
        for reason, count in sorted(counts["kept_without_pairs"].items(), key=lambda kv: -kv[1]):
            lines.append(f"no pairs   {name}: {reason}: {count:,} (lines still in the corpus)")
        for note, count in sorted(counts["notes"].items(), key=lambda kv: -kv[1]):
            lines.append(f"noted      {name}: {note}: {count:,}")
    for name, linked in result.get("linking", {}).items():
        lines.append(
            f"linked     {name}: {linked['positives_linked']:,} of {linked['positives']:,} positives, "
            f"{linked['lines_linked']:,} of {linked['lines']:,} lines ({linked['lines_linked_by_half_line']:,} "
            "by a half line) to a poem"
        )
    if "lines_in_several_poems" in result:
        several = result["lines_in_several_poems"]
        lines.append(f"recurring  {several:,} lines are in several poems (the earliest poem keeps them)")
    lines.append(
        f"train {result['train_pairs']:,} pairs / {result['train_groups']:,} groups; "
        f"eval {result['eval_pairs']:,} pairs / {result['eval_groups']:,} groups; "
        f"corpus {result['corpus_size']:,} unique lines"
    )
    return "\n".join(lines)
