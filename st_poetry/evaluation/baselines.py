"""BM25 as a row of the evaluation report: its rankings go through the IR evaluator's own metric code, so a BM25 row
is computed exactly like a model's; its CCPM accuracy picks the choice with the highest BM25 score."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

from st_poetry.evaluation.metrics import CCPMRecord, choice_accuracy, max_k, reported_metrics
from st_poetry.retrieval.lexical import bm25_scores, build_bm25


def bm25_retrieval_metrics(
    evaluator: InformationRetrievalEvaluator, tokenize: Callable[[str], list[str]], *, show_progress_bar: bool = False
) -> dict[str, float]:
    """BM25 (bm25s) over the evaluator's own queries and corpus, scored by the evaluator's own metric code.

    Documents sharing no token with the query (score 0) are not ranked at all.
    """
    retriever = build_bm25(evaluator.corpus, tokenize, show_progress=show_progress_bar)
    indices, scores = retriever.retrieve(
        [tokenize(query) for query in evaluator.queries],
        k=min(max_k(evaluator), len(evaluator.corpus)),
        show_progress=show_progress_bar,
    )
    ranked = [
        [
            {"corpus_id": evaluator.corpus_ids[index], "score": float(score)}
            for index, score in zip(row_indices, row_scores, strict=True)
            if score > 0
        ]
        for row_indices, row_scores in zip(indices.tolist(), scores.tolist(), strict=True)
    ]
    return reported_metrics(evaluator.compute_metrics(ranked))


def bm25_ccpm_scores(records: Sequence[CCPMRecord], tokenize: Callable[[str], list[str]]) -> list[np.ndarray]:
    """Each record's choices scored by BM25 against its translation, IDF over all the records' choices."""
    retriever = build_bm25([choice for record in records for choice in record.choices], tokenize)
    scores, start = [], 0
    for record in records:
        stop = start + len(record.choices)
        scores.append(bm25_scores(retriever, tokenize(record.translation))[start:stop])
        start = stop
    return scores


def bm25_ccpm_accuracy(records: Sequence[CCPMRecord], tokenize: Callable[[str], list[str]]) -> float:
    """CCPM accuracy when the choice with the highest BM25 score is the prediction."""
    return choice_accuracy(records, bm25_ccpm_scores(records, tokenize))
