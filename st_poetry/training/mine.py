"""Add hard negatives to the prepared (anchor, positive) pairs: `just mine` (st-poetry mine).

1. Read the prepared train/eval/corpus files and load the model with its query/document prompts.
2. For train and eval separately, ask sentence-transformers' `mine_hard_negatives` (faiss, whole corpus as
   candidates) for *every* candidate in ranks [range_min, range_max) that passes the relative margin. The
   library's "n-tuple" format would drop every row that lacks a full set, and could only hand us as many
   candidates as we finally keep; "labeled-list" returns all surviving candidates in rank order, so the filters
   below still leave enough.
3. Filter what the library cannot know: another line of the positive's own poem, a text equal to the positive or
   the anchor once punctuation and whitespace are ignored (or holding / held in the positive, as a couplet holds
   its line), a repeat, and (train only) any eval text.
4. Given negatives (CCPM's wrong choices, FlagEmbedding `neg`) come first; mined ones fill up to num_negatives
   ("top": the hardest survivors, "random": a seeded sample of them). Short rows are kept with nulls.

Corpus embeddings are cached under `cache_folder/<model fingerprint>`, so a rerun with other ranges (or the
eval split, which shares the corpus) encodes nothing new. Each cached file has its checksum beside it: one that
changed after it was written is computed again, with a warning, never used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import mine_hard_negatives

from st_poetry.core.config import MineConfig
from st_poetry.core.errors import UserError, warn
from st_poetry.core.files import atomic_output_dir, check_output_dir, sha256, write_json
from st_poetry.core.log import get_logger, get_verbosity
from st_poetry.core.modeling import load_model
from st_poetry.core.prompts import document_prompt, query_prompt
from st_poetry.core.schema import CORPUS, MINED, PAIR, SPLITS, mined_row, read_split, require_files
from st_poetry.core.tables import format_table
from st_poetry.data.records import normalize
from st_poetry.evaluation.metrics import sample_pool

logger = get_logger(__name__)
MARKER = MineConfig.MARKER
CHECKSUM = ".sha256"  # beside each cached .npy: the sha256 of the file as the library wrote it
# Above this share of rows short of num_negatives, the summary suggests widening the range.
SHORT_ROWS_WARNING = 0.1
# A candidate that contains the positive (its couplet) or is contained in it counts as the same text, down to
# this many characters: the shortest classical lines (四言).
MIN_CONTAINED_CHARS = 4


@dataclass
class Prepared:
    """A `just prepare` folder as read: the PAIR rows of each split and the CORPUS rows."""

    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    corpus: list[dict[str, Any]]

    def split(self, name: str) -> list[dict[str, Any]]:
        """The rows of split `name` (one of SPLITS: the files and the stats are named after it)."""
        return {"train": self.train, "eval": self.eval}[name]

    @property
    def pairs(self) -> list[dict[str, Any]]:
        """Both splits' rows."""
        return self.train + self.eval


def read_prepared(folder: Path) -> Prepared:
    """The prepared train/eval pair rows and corpus; a missing file or a malformed row names the file and line."""
    require_files(folder, ("train.jsonl", "eval.jsonl", "corpus.jsonl"), "a folder written by `just prepare`")
    train, evaluation = (read_split(folder / f"{split}.jsonl", accept=(PAIR,)).rows for split in SPLITS)
    data = Prepared(train, evaluation, CORPUS.read(folder / "corpus.jsonl"))
    if not data.corpus:
        raise UserError(f"{folder / 'corpus.jsonl'} is empty: there is nothing to mine negatives from")
    return data


def groups_by_text(data: Prepared) -> dict[str, set[str]]:
    """normalize(text) -> every poem/record it belongs to (famous lines recur); "" (unknown) is left out."""
    groups: dict[str, set[str]] = defaultdict(set)
    for row in data.corpus:
        if row["group"]:
            groups[normalize(row["text"])].add(row["group"])
    for row in data.pairs:
        if row["group"]:
            groups[normalize(row["positive"])].add(row["group"])
    return groups


def candidate_texts(data: Prepared, max_corpus: int | None = None, seed: int = 42) -> list[str]:
    """The corpus plus any positive missing from it (the library would add a split's own anyway): one list for
    both splits, so its embeddings are computed and cached once.

    With `max_corpus`, a candidate pool (FlagEmbedding's `candidate_pool` idea): every positive and given
    negative, and a seeded sample of the other lines, `max_corpus` in all.
    """
    texts = [row["text"] for row in data.corpus] + [row["positive"] for row in data.pairs]
    texts = list(dict.fromkeys(texts))
    if max_corpus is None or len(texts) <= max_corpus:
        return texts
    rows = data.pairs
    keep = {row["positive"] for row in rows} | {text for row in rows for text in row["negatives"]}
    pool = sample_pool(texts, keep, max_corpus, seed)
    return [text for text in texts if text in pool]


def model_fingerprint(model: SentenceTransformer) -> str:
    """A short hash of the weights, architecture, token limit and the prompt strings encoding adds.

    The library keys its cache on the model's Hub name (empty for a local folder) and on prompts passed to it
    explicitly, not on the model's own prompts that encode_query/encode_document add: without them here a
    changed query prompt would reuse stale query embeddings.
    """
    prompts = json.dumps([query_prompt(model), document_prompt(model)], ensure_ascii=False)
    digest = hashlib.sha256(f"{model!r}|{model.max_seq_length}|{prompts}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


@contextmanager
def count_encoding(model: SentenceTransformer, counter: Counter) -> Iterator[None]:
    """Time and count what `model.encode` does (the library calls it for queries and corpus) for the stats."""
    original = model.encode

    def encode(inputs, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(inputs, *args, **kwargs)
        finally:
            counter["encode_seconds"] += time.perf_counter() - start
            counter["encoded_texts"] += 1 if isinstance(inputs, str) else len(inputs)

    model.encode = encode
    try:
        yield
    finally:
        del model.encode


def mine_candidates(
    rows: list[dict[str, Any]],
    corpus: list[str],
    model: SentenceTransformer,
    config: MineConfig,
    cache_folder: str | None,
) -> tuple[dict[tuple[str, str], list[str]], dict[str, float | int]]:
    """(anchor, positive) -> every candidate in [range_min, range_max) that passes the margin, hardest first."""
    timing: Counter = Counter()
    if not rows:
        return {}, {"encode_seconds": 0.0, "search_seconds": 0.0, "encoded_texts": 0}
    pairs = Dataset.from_dict({"anchor": [r["anchor"] for r in rows], "positive": [r["positive"] for r in rows]})
    start = time.perf_counter()
    with count_encoding(model, timing):
        mined = mine_hard_negatives(
            pairs,
            model,
            corpus=corpus,
            range_min=config.range_min,
            range_max=config.range_max,
            relative_margin=config.relative_margin,
            num_negatives=config.range_max - config.range_min,  # all of them: we filter and sample afterwards
            sampling_strategy="top",
            output_format="labeled-list",
            batch_size=config.batch_size,
            use_faiss=True,
            cache_folder=cache_folder,
            verbose=get_verbosity() <= logging.INFO,  # its own statistics, printed; -q hides them
        )
    total = time.perf_counter() - start
    if cache_folder:
        seal_cache(Path(cache_folder))
    # labeled-list rows: (anchor, [positive, candidate, ...], labels); rows left with no candidate are absent.
    candidates = {(row["anchor"], row["positive"][0]): row["positive"][1:] for row in mined}
    stats = {
        "encode_seconds": round(timing["encode_seconds"], 2),
        "search_seconds": round(total - timing["encode_seconds"], 2),
        "encoded_texts": int(timing["encoded_texts"]),
    }
    return candidates, stats


def assemble(
    row: dict[str, Any],
    candidates: list[str],
    groups: dict[str, set[str]],
    banned: set[str],
    config: MineConfig,
    rng: random.Random,
    drops: dict[str, Counter],
) -> tuple[list[str], int]:
    """Given negatives first, then mined ones up to num_negatives; returns (negatives, how many were mined).

    Given negatives are trusted (a CCPM choice shares its record's group by construction), so only the text
    checks apply to them; mined candidates must also come from another poem than the positive. "Same text"
    ignores punctuation and whitespace; a couplet holding the positive line (or a half of it) is no negative.
    """
    anchor, positive = normalize(row["anchor"]), normalize(row["positive"])
    positive_groups = groups.get(positive, set()) | ({row["group"]} if row["group"] else set())
    seen: set[str] = set()

    def reason(text: str, is_mined: bool) -> str | None:
        key = normalize(text)
        if key in (anchor, positive):
            return "same_text"
        shorter, longer = sorted((key, positive), key=len)
        if len(shorter) >= MIN_CONTAINED_CHARS and shorter in longer:
            return "contains_positive"
        if key in seen:
            return "repeat"
        if key in banned:
            return "eval_text"
        if is_mined and groups.get(key, set()) & positive_groups:
            return "same_poem"
        seen.add(key)
        return None

    given = [text for text in row["negatives"] if not _dropped(reason(text, False), drops["given"])]
    if len(given) > config.num_negatives:
        drops["given"]["over_num_negatives"] += len(given) - config.num_negatives
        given = given[: config.num_negatives]
    mined = [text for text in candidates if not _dropped(reason(text, True), drops["mined"])]
    wanted = config.num_negatives - len(given)
    if config.sampling_strategy == "random" and len(mined) > wanted:
        mined = [mined[i] for i in sorted(rng.sample(range(len(mined)), wanted))]
    mined = mined[:wanted]
    return given + mined, len(mined)


def _dropped(reason: str | None, counter: Counter) -> bool:
    if reason is not None:
        counter[reason] += 1
    return reason is not None


def mine_split(
    split: str,
    data: Prepared,
    pool: list[str],
    model: SentenceTransformer,
    config: MineConfig,
    cache_folder: str | None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Mine one split against the candidate `pool`; train never sees an eval anchor or positive (any form)."""
    banned: set[str] = set()
    rows_dropped: Counter = Counter()
    rows = data.split(split)
    if split == "train":
        banned = {normalize(r[key]) for r in data.eval for key in ("anchor", "positive")}
        kept = []
        for row in rows:
            if normalize(row["positive"]) in banned:
                rows_dropped["positive_is_eval_text"] += 1
            elif normalize(row["anchor"]) in banned:
                rows_dropped["anchor_is_eval_text"] += 1
            else:
                kept.append(row)
        rows = kept
    candidates, timing = mine_candidates(rows, pool, model, config, cache_folder)

    groups = groups_by_text(data)
    rng = random.Random(config.seed)
    drops = {"given": Counter(), "mined": Counter()}
    out, short, given_used, mined_used = [], 0, 0, 0
    same_poem: Counter = Counter()  # mined candidates dropped as the positive's poem, by the row's source
    for row in rows:
        before = drops["mined"]["same_poem"]
        found = candidates.get((row["anchor"], row["positive"]), [])
        negatives, n_mined = assemble(row, found, groups, banned, config, rng, drops)
        same_poem[row.get("source", "")] += drops["mined"]["same_poem"] - before
        short += len(negatives) < config.num_negatives
        given_used += len(negatives) - n_mined
        mined_used += n_mined
        padded = negatives + [None] * (config.num_negatives - len(negatives))
        out.append(mined_row(row["anchor"], row["positive"], padded))
    stats = {
        "rows_in": len(data.split(split)),
        "rows_out": len(out),
        "rows_dropped": dict(rows_dropped),
        "short_rows": short,
        "short_fraction": round(short / len(out), 4) if out else 0.0,
        "negatives_given": given_used,
        "negatives_mined": mined_used,
        "negatives_missing": len(out) * config.num_negatives - given_used - mined_used,
        "rows_without_candidates": sum((r["anchor"], r["positive"]) not in candidates for r in rows),
        "dropped_given": dict(drops["given"]),
        "dropped_mined": dict(drops["mined"]),
        "same_poem_by_source": {source: count for source, count in same_poem.items() if count},
        **timing,
    }
    return out, stats


def check_inputs(data: Prepared, pool: list[str], data_dir: Path, config: MineConfig) -> None:
    """Refuse a --num-negatives the candidates cannot fill (it would only write nulls); warn about an empty split,
    which `just train` would otherwise be the first to notice."""
    needed = config.range_min + config.num_negatives + 1  # the row's own positive is among the candidates
    if needed > len(pool):
        raise UserError(
            f"--num-negatives {config.num_negatives} from rank --range-min {config.range_min} on needs {needed:,} "
            f"candidate lines, but {data_dir} has {len(pool):,}"
            + (f" in a --max-corpus {config.max_corpus} pool" if config.max_corpus else "")
            + ": lower --num-negatives or --range-min"
        )
    for split in SPLITS:
        if not data.split(split):
            warn(
                f"{data_dir / f'{split}.jsonl'} has no rows, so the mined {split} split is empty too, and "
                f"`just train` needs {split} rows (see `just prepare --help`: --eval-fraction, --ccpm-eval)"
            )


def check_cache(folder: Path) -> None:
    """Remove every cached .npy that cannot be trusted, so that its embeddings are computed again: one that does
    not load (the library np.saves straight to the final name, so a run killed meanwhile leaves it truncated),
    one without the checksum `seal_cache` writes beside it, or one whose bytes no longer match that checksum (a
    valid array put in its place would otherwise change every mined negative without a word)."""
    for sidecar in sorted(folder.glob(f"*.npy{CHECKSUM}")):
        if not sidecar.with_suffix("").exists():
            sidecar.unlink()  # its .npy is gone: a new one will get a new checksum
    for path in sorted(folder.glob("*.npy")):
        sidecar = path.with_name(path.name + CHECKSUM)
        try:
            np.load(path, mmap_mode="r")
            recorded = sidecar.read_text(encoding="utf-8").strip() if sidecar.exists() else None
        except (ValueError, OSError, EOFError):
            logger.info(f"note: {path} is unreadable (an interrupted run?): removed, its embeddings are computed again")
        else:
            if recorded == sha256(path):
                logger.debug(f"{path}: cached embeddings, checksum ok")
                continue
            if recorded is None:
                logger.info(
                    f"note: {path} has no {CHECKSUM} checksum beside it (cut off before it was written, or cached by "
                    "an older st_poetry), so it cannot be checked: removed, its embeddings are computed again"
                )
            else:
                warn(
                    f"{path} changed after it was cached (its sha256 no longer matches {sidecar.name}): removed, its "
                    "embeddings are computed again"
                )
        path.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)


def seal_cache(folder: Path) -> None:
    """Write the checksum of each cached .npy that has none yet (the library just saved it); written to a
    temporary name and renamed, so a checksum file is always whole."""
    for path in sorted(folder.glob("*.npy")):
        sidecar = path.with_name(path.name + CHECKSUM)
        if not sidecar.exists():
            partial = sidecar.with_name(f".{sidecar.name}.{os.getpid()}")
            partial.write_text(sha256(path) + "\n", encoding="utf-8")
            partial.replace(sidecar)


def mine(config: MineConfig) -> dict[str, Any]:
    """Mine hard negatives for the prepared train and eval splits into `config.out`; returns the stats."""
    data_dir = Path(config.data)
    data = read_prepared(data_dir)
    pool = candidate_texts(data, config.max_corpus, config.seed)
    check_inputs(data, pool, data_dir, config)
    check_output_dir(config.out, MARKER)
    model = load_model(
        config.model,
        max_seq_length=config.max_seq_length,
        query_instruction=config.query_instruction,
        backend=config.backend,
    )
    cache_folder = str(Path(config.cache_folder) / model_fingerprint(model)) if config.cache_folder else None
    if cache_folder:
        check_cache(Path(cache_folder))

    stats: dict[str, Any] = {"corpus_size": len(data.corpus), "candidates": len(pool)}
    where = f"{len(pool):,} candidates ({len(data.corpus):,} corpus lines)"
    with atomic_output_dir(config.out, MARKER) as tmp:
        for split in SPLITS:
            logger.info(f"Mining {split} ({len(data.split(split)):,} rows) against {where}")
            rows, stats[split] = mine_split(split, data, pool, model, config, cache_folder)
            MINED.write(tmp / f"{split}.jsonl", rows)
        shutil.copyfile(data_dir / "corpus.jsonl", tmp / "corpus.jsonl")
        stats["config"] = dataclasses.asdict(config)
        write_json(tmp / MARKER, stats)
    logger.info(summary(stats, config))
    for split in SPLITS:
        if stats[split]["short_fraction"] > SHORT_ROWS_WARNING:
            warn(
                f"{stats[split]['short_fraction']:.0%} of {split} rows have fewer than {config.num_negatives} "
                "negatives (null-padded); widen the range (--range-max) or lower --relative-margin for more candidates"
            )
    return stats


def summary(stats: dict[str, Any], config: MineConfig) -> str:
    """The counts per split, each followed by what was dropped and why."""
    columns = ("rows in", "rows out", "given", "mined", "short", "encode s", "search s")
    rows = [
        [
            split,
            *(f"{stats[split][key]:,}" for key in ("rows_in", "rows_out", "negatives_given", "negatives_mined")),
            f"{stats[split]['short_rows']:,}",
            f"{stats[split]['encode_seconds']:.1f}",
            f"{stats[split]['search_seconds']:.1f}",
        ]
        for split in SPLITS
    ]
    header, *lines = format_table(["split", *columns], rows, align="lr").splitlines()
    out = [
        f"\nMined into {config.out} (ranks {config.range_min}-{config.range_max}, {config.sampling_strategy})",
        header,
    ]
    for split, line in zip(SPLITS, lines, strict=True):
        s = stats[split]
        dropped = {**s["rows_dropped"], **{f"mined {k}": v for k, v in s["dropped_mined"].items()}}
        dropped |= {f"given {k}": v for k, v in s["dropped_given"].items()}
        out.append(line)
        if dropped:
            out.append("      dropped: " + ", ".join(f"{k} {v:,}" for k, v in sorted(dropped.items())))
    return "\n".join(out)
