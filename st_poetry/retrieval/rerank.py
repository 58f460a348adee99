"""Rerank at query time: a cross-encoder (`just train-reranker`) reorders the first K hits of any retriever.

A bi-encoder compares two vectors made apart; a cross-encoder reads the description and the line together, at
the price of one forward pass per pair, so it reads only the few candidates a retriever (a model, BM25, a fusion)
returns. `just evaluate --reranker`, `just search --reranker` and the server use it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the reranker is passed in: the query path without one loads no torch
    from sentence_transformers import CrossEncoder


def rerank_scores(
    model: CrossEncoder,
    queries: Sequence[str],
    hits: Sequence[Sequence[dict]],
    top_k: int,
    *,
    text: Callable[[dict], str] = lambda hit: hit["text"],
    batch_size: int = 64,
    show_progress_bar: bool = False,
    known: dict[tuple[str, str], float] | None = None,
) -> list[list[float]]:
    """The reranker's score of each query's first `top_k` hits (any dicts; `text` gives a hit's line), in one
    batched predict over the pairs not in `known` yet. A (query, line) pair's score does not depend on the
    retriever that found it, so passes over several retrievers' hits share `known` and score a pair once."""
    known = {} if known is None else known
    heads = [list(query_hits[:top_k]) for query_hits in hits]
    pairs = [[(query, text(hit)) for hit in head] for query, head in zip(queries, heads, strict=True)]
    todo = [pair for pair in dict.fromkeys(pair for query_pairs in pairs for pair in query_pairs) if pair not in known]
    if todo:
        scores = model.predict(todo, batch_size=batch_size, show_progress_bar=show_progress_bar)
        known.update(zip(todo, map(float, scores), strict=True))
    return [[known[pair] for pair in query_pairs] for query_pairs in pairs]


def reorder(hits: Sequence[dict], scores: Sequence[float]) -> list[dict]:
    """The first len(scores) hits sorted by those scores, each with its "rerank_score" beside what the retriever
    gave it; the hits below follow in the retriever's order. Ties keep the retriever's order."""
    head = [{**hit, "rerank_score": score} for hit, score in zip(hits, scores, strict=False)]
    head.sort(key=lambda hit: -hit["rerank_score"])
    return head + list(hits[len(head) :])


def rerank(
    model: CrossEncoder, queries: Sequence[str], hits: Sequence[Sequence[dict]], top_k: int, **kwargs: Any
) -> list[list[dict]]:
    """Each query's first `top_k` hits, as its retriever (a model, BM25, a fusion) ranked them, reordered by the
    reranker; see rerank_scores for the keyword arguments."""
    scores = rerank_scores(model, queries, hits, top_k, **kwargs)
    return [reorder(query_hits, query_scores) for query_hits, query_scores in zip(hits, scores, strict=True)]
