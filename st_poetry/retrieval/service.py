"""The retrieval service: the one path from descriptions to hits that `just search` and `just serve` share.

    service = SearchService(PoetryIndex("indexes/poetry"), reranker, rerank_top_k=50)
    hits = service.search(queries, SearchOptions(top_k=10, fusion=FusionOptions(hybrid=True)))

For a batch of queries, each with its own options: check them, encode them all in one model call, retrieve
(faiss, or the fusion of faiss and BM25, `retrieval.hybrid`) in one call per distinct retrieval setting, rerank
the queries that ask for it in one predict (`retrieval.rerank`), and return each query's hits with the line's
metadata. A query's hits do not depend on the other queries of its batch, so the server may batch the requests
of different clients (serve.app's Batcher) and answer each what it would have got alone.
"""

from __future__ import annotations

import dataclasses
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from st_poetry.core.config import FusionOptions
from st_poetry.core.errors import UserError
from st_poetry.retrieval.rerank import rerank

if TYPE_CHECKING:  # search.py builds on this module; the index is only passed in
    from sentence_transformers import CrossEncoder

    from st_poetry.retrieval.search import PoetryIndex

EXAMPLE_QUERY = "山中下雨后傍晚的秋天"  # what a message about a bad query suggests


def query_problem(text: str) -> str | None:
    """Why a query cannot be searched for ("is empty", ...), or None when it has a letter, number or symbol.

    Symbols count (an emoji is text a description may be made of, and a tokenizer encodes it); what is left has
    nothing to describe: whitespace, zero-width and other invisible characters, lone marks, punctuation.
    """
    stripped = text.strip()
    kinds = {unicodedata.category(char)[0] for char in stripped}
    if kinds & {"L", "N", "S"}:
        return None
    if not stripped:
        return "is empty"
    if "P" in kinds:
        return "is punctuation only"
    return "has no visible character (only invisible or combining ones)"


def check_query(text: str) -> str:
    """The query stripped; one without a letter, number or symbol (`query_problem`) is an error."""
    problem = query_problem(text)
    if problem:
        what = "empty query" if not text.strip() else f"query {text.strip()!r} {problem}"
        raise UserError(f'{what}: describe what you are looking for, e.g. "{EXAMPLE_QUERY}"')
    return text.strip()


def fusion_options(options: FusionOptions) -> FusionOptions:
    """The FusionOptions part of a config that extends them (QueryConfig, ServeConfig), as a plain FusionOptions."""
    return FusionOptions(**{f.name: getattr(options, f.name) for f in dataclasses.fields(FusionOptions)})


@dataclass(frozen=True)
class SearchOptions:
    """What a query asks for: its top_k lines, retrieved by the model alone or fused with BM25 (`fusion.hybrid`
    and its settings), reranked or not."""

    top_k: int = 10
    fusion: FusionOptions = field(default_factory=FusionOptions)
    rerank: bool = False


class SearchService:
    """An opened index, and optionally a reranker that reads each query's first `rerank_top_k` retrieved lines."""

    def __init__(self, index: PoetryIndex, reranker: CrossEncoder | None = None, rerank_top_k: int = 50) -> None:
        self.index, self.reranker = index, reranker
        self.rerank_depth = min(rerank_top_k, index.index.ntotal)

    def retrieval_key(self, options: SearchOptions) -> tuple[Any, ...]:
        """Queries with equal keys are retrieved in one call: the depth retrieved and, for a fusion, its settings
        (a dense search ignores them)."""
        depth = max(options.top_k, self.rerank_depth) if options.rerank else options.top_k
        fusion = options.fusion
        settings = tuple(getattr(fusion, f.name) for f in dataclasses.fields(FusionOptions)) if fusion.hybrid else ()
        return depth, fusion.hybrid, settings

    def search(
        self,
        queries: Sequence[str],
        options: SearchOptions | Sequence[SearchOptions],
        timing: dict[str, float] | None = None,
    ) -> list[list[dict[str, Any]]]:
        """For each query, its top_k lines best first: rank, score and the line's metadata (`PoetryIndex.retrieve`).

        `options` is one for all queries or one per query. A reranked query's "rank" is the reranker's place, its
        retriever's place and score stay as "retrieval_rank" and "score", its reranker score is "rerank_score".
        A query without a letter, number or symbol is an error (`check_query`). `timing`, when given, gets the
        seconds spent retrieving (encode included) and reranking added to its "retrieval" and "rerank".
        """
        per_query = [options] * len(queries) if isinstance(options, SearchOptions) else list(options)
        if len(per_query) != len(queries):
            raise ValueError(f"{len(queries)} queries but {len(per_query)} options")
        if not queries:
            return []
        for text in queries:
            check_query(text)
        if self.reranker is None and any(option.rerank for option in per_query):
            raise UserError("no reranker to rerank with: pass --reranker PATH")
        timing = {} if timing is None else timing
        start = time.perf_counter()
        embeddings = self.index.encode_queries(queries)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for number, option in enumerate(per_query):
            groups.setdefault(self.retrieval_key(option), []).append(number)
        hits: list[list[dict[str, Any]]] = [[] for _ in queries]
        for (depth, _, _), numbers in groups.items():
            found = self.index.retrieve(
                [queries[n] for n in numbers], embeddings[numbers], depth, per_query[numbers[0]].fusion
            )
            for number, query_hits in zip(numbers, found, strict=True):
                hits[number] = query_hits
        timing["retrieval"] = timing.get("retrieval", 0.0) + time.perf_counter() - start

        reranked = [number for number, option in enumerate(per_query) if option.rerank]
        if reranked:
            start = time.perf_counter()
            reordered = rerank(
                self.reranker, [queries[n] for n in reranked], [hits[n] for n in reranked], self.rerank_depth
            )
            for number, query_hits in zip(reranked, reordered, strict=True):
                hits[number] = [
                    {**hit, "rank": rank, "retrieval_rank": hit["rank"]}
                    for rank, hit in enumerate(query_hits[: per_query[number].top_k], start=1)
                ]
            timing["rerank"] = timing.get("rerank", 0.0) + time.perf_counter() - start
        return hits
