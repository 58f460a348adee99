"""Hybrid retrieval: the dense (faiss) and the lexical (BM25) rankings of a query fused into one.

Candidates are the union of each side's top `depth`. Every candidate gets both of its exact scores (its cosine
from the faiss vectors, its BM25 score from bm25s), so the fused ranking and the JSON of `just search` can show
both sides even for a line only one side found. Two fusions:

- `interpolate`: alpha * dense + (1 - alpha) * bm25, each min-max normalised over the query's candidates
  (cosines and BM25 scores live on unrelated scales, and BM25's grows with the query's length);
- `rrf`: reciprocal rank fusion, alpha / (rrf_k + dense rank) + (1 - alpha) / (rrf_k + bm25 rank), where a
  candidate outside a side's top `depth` gets nothing from that side; alpha = 0.5, rrf_k = 60 is the classic RRF.

alpha = 1 ranks by the dense score alone and alpha = 0 by BM25 alone, so the sweep's ends are the two sides.
`just evaluate --hybrid` and `just search --hybrid` share `candidates` and `fuse`; the defaults were chosen on
the eval split (docs/BENCHMARKS.md). A search (`fused_ranking`) gathers at least as deep as the lines it returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import bm25s
import faiss
import numpy as np

from st_poetry.core.config import FusionOptions
from st_poetry.retrieval.lexical import bm25_scores

# top_ids: one score in this many sets the threshold that spares a partition of them all.
TOP_SAMPLE_STRIDE = 32


@dataclass
class Candidates:
    """Per query (row), its candidates (columns, padded): corpus ids (-1 = padding) and both sides' scores."""

    ids: np.ndarray
    dense: np.ndarray
    lexical: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        return self.ids >= 0

    # Ranks among the candidates, which hold each side's top `depth`: so one gathering at a large depth serves
    # every smaller depth, and a sweep ranks once. The dense side lists every candidate, the BM25 side those
    # with a positive score (a line sharing no token with the query is not a BM25 hit).
    @cached_property
    def dense_rank(self) -> np.ndarray:
        return _ranks(self.dense, self.valid)

    @cached_property
    def lexical_rank(self) -> np.ndarray:
        return _ranks(self.lexical, self.valid & (self.lexical > 0))


def candidates(
    index: faiss.Index,
    query_embeddings: np.ndarray,
    bm25: bm25s.BM25,
    query_tokens: Sequence[Sequence[str]],
    depth: int,
) -> Candidates:
    """The union of each query's dense top `depth` (faiss) and BM25 top `depth` (lines sharing a token)."""
    depth = min(depth, index.ntotal)
    _, dense_ids = index.search(query_embeddings, depth)
    rows = []
    for embedding, found, tokens in zip(query_embeddings, dense_ids, query_tokens, strict=True):
        lexical = bm25_scores(bm25, tokens)
        top = top_ids(lexical, depth)
        ids = np.array(list(dict.fromkeys([*found[found >= 0].tolist(), *top[lexical[top] > 0].tolist()])))
        # exact cosines for BM25-only lines too (and for HNSW hits); an 8-bit index passes its `RescoredIndex`
        vectors = index.reconstruct_batch(ids)
        rows.append((ids, vectors @ embedding, lexical[ids]))
    width = max(len(ids) for ids, _, _ in rows)
    padded = Candidates(
        np.full((len(rows), width), -1, dtype=np.int64),
        np.zeros((len(rows), width), dtype=np.float32),
        np.zeros((len(rows), width), dtype=np.float32),
    )
    for row, (ids, dense, lexical) in enumerate(rows):
        padded.ids[row, : len(ids)] = ids
        padded.dense[row, : len(ids)] = dense
        padded.lexical[row, : len(ids)] = lexical
    return padded


def top_ids(scores: np.ndarray, k: int) -> np.ndarray:
    """The ids of the k highest scores, in no order; all ids when there are no more than k.

    Partitioning every line's score costs the most of a BM25 side on a large corpus. A threshold at the
    (2k / TOP_SAMPLE_STRIDE)-th highest of every TOP_SAMPLE_STRIDE-th score keeps the top k and a few k more, which
    are partitioned instead: exact whenever at least k scores reach the threshold (the k-th highest then does too),
    and a full partition when fewer do.
    """
    if k >= len(scores):
        return np.arange(len(scores))
    sample = scores[::TOP_SAMPLE_STRIDE]
    keep = 2 * k // TOP_SAMPLE_STRIDE + 1
    if len(sample) > keep:
        kept = np.flatnonzero(scores >= np.partition(sample, len(sample) - keep)[len(sample) - keep])
        if len(kept) >= k:
            return kept[np.argpartition(-scores[kept], k - 1)[:k]]
    return np.argpartition(-scores, k - 1)[:k]


def _ranks(scores: np.ndarray, listed: np.ndarray) -> np.ndarray:
    """0-based rank of each entry among its row's `listed` entries by descending score; unlisted: a huge rank."""
    order = np.argsort(np.where(listed, -scores, np.inf), axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :].repeat(len(scores), axis=0), axis=1)
    return np.where(listed, ranks, np.iinfo(np.int64).max // 2)


def _min_max(scores: np.ndarray, keep: np.ndarray) -> np.ndarray:
    low = np.where(keep, scores, np.inf).min(axis=1, keepdims=True)
    high = np.where(keep, scores, -np.inf).max(axis=1, keepdims=True)
    return (scores - low) / np.where(high > low, high - low, 1.0)


def fuse(found: Candidates, options: FusionOptions) -> np.ndarray:
    """Fused scores shaped like `found`; -inf for padding and for lines outside both sides' top `depth`."""
    dense_rank, lexical_rank = found.dense_rank, found.lexical_rank
    in_dense, in_lexical = dense_rank < options.depth, lexical_rank < options.depth
    keep = in_dense | in_lexical
    alpha = options.alpha
    if options.fusion == "rrf":
        fused = alpha * in_dense / (options.rrf_k + 1 + dense_rank) + (1 - alpha) * in_lexical / (
            options.rrf_k + 1 + lexical_rank
        )
    else:
        fused = alpha * _min_max(found.dense, keep) + (1 - alpha) * _min_max(found.lexical, keep)
    return np.where(keep, fused, -np.inf)


def fused_ranking(
    index: faiss.Index,
    query_embeddings: np.ndarray,
    bm25: bm25s.BM25,
    query_tokens: Sequence[Sequence[str]],
    options: FusionOptions,
    top_k: int,
) -> list[list[tuple[int, float, float, float]]]:
    """A search's fused top_k (`ranking`), gathered `candidates` of at least top_k per side.

    The candidates of a depth below top_k hold fewer lines than asked for (at most twice the depth): the depth
    is raised to top_k, so a search returns top_k lines, or every line of an index that has fewer.
    """
    chosen = {f.name: getattr(options, f.name) for f in dataclasses.fields(FusionOptions)}
    options = FusionOptions(**chosen | {"depth": max(options.depth, top_k)})
    found = candidates(index, query_embeddings, bm25, query_tokens, options.depth)
    return ranking(found, fuse(found, options), top_k)


def ranking(found: Candidates, fused: np.ndarray, top_k: int) -> list[list[tuple[int, float, float, float]]]:
    """Each query's best `top_k` candidates as (corpus id, dense score, BM25 score, fused score), best first.

    Ties in the fused score go to the higher dense score.
    """
    order = np.lexsort((-found.dense, -fused), axis=1)[:, :top_k]
    results = []
    for row, columns in enumerate(order):
        columns = columns[np.isfinite(fused[row, columns])]
        results.append(
            [
                (int(found.ids[row, c]), float(found.dense[row, c]), float(found.lexical[row, c]), float(fused[row, c]))
                for c in columns
            ]
        )
    return results


def fused_choice_scores(
    dense: Sequence[np.ndarray], lexical: Sequence[np.ndarray], options: FusionOptions
) -> list[np.ndarray]:
    """Multiple-choice records (CCPM): each record's choices, all of them its candidates, scored by the fusion."""
    width = max(len(scores) for scores in dense)

    def padded(rows: Sequence[np.ndarray], fill: float) -> np.ndarray:
        return np.array([[*row, *[fill] * (width - len(row))] for row in rows], dtype=np.float32)

    found = Candidates(
        padded([np.arange(len(s)) for s in dense], -1).astype(np.int64), padded(dense, 0), padded(lexical, 0)
    )
    fused = fuse(found, dataclasses.replace(options, depth=width))
    return [row[: len(scores)] for row, scores in zip(fused, dense, strict=True)]
