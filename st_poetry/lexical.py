"""Lexical retrieval: BM25 (bm25s) over jieba words or single characters, the baseline a user would reach for.

Rankings go through the IR evaluator's own metric code (`st_poetry.metrics`), so a BM25 row of a report is
computed exactly like a model's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import bm25s
import jieba
import numpy as np
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

from st_poetry.metrics import CCPMRecord, reported_metrics

jieba.setLogLevel(logging.WARNING)  # not its "Building prefix dict" chatter on every run


def jieba_words(text: str) -> list[str]:
    """jieba word segmentation, punctuation and spaces dropped."""
    return [word for word in jieba.lcut(text) if any(ch.isalnum() for ch in word)]


def single_chars(text: str) -> list[str]:
    """Every letter/character on its own: classical poetry has no reliable word boundaries."""
    return [ch for ch in text if ch.isalnum()]


BM25_TOKENIZERS: dict[str, Callable[[str], list[str]]] = {"bm25-jieba": jieba_words, "bm25-chars": single_chars}


def bm25_retrieval_metrics(
    evaluator: InformationRetrievalEvaluator, tokenize: Callable[[str], list[str]], *, show_progress_bar: bool = False
) -> dict[str, float]:
    """BM25 (bm25s) over the evaluator's own queries and corpus, scored by the evaluator's own metric code.

    Documents sharing no token with the query (score 0) are not ranked at all.
    """
    retriever = bm25s.BM25()
    retriever.index([tokenize(text) for text in evaluator.corpus], show_progress=show_progress_bar)
    cutoffs = (evaluator.mrr_at_k, evaluator.ndcg_at_k, evaluator.accuracy_at_k, evaluator.map_at_k)
    max_k = max(max(ks) for ks in (*cutoffs, evaluator.precision_recall_at_k))
    indices, scores = retriever.retrieve(
        [tokenize(query) for query in evaluator.queries],
        k=min(max_k, len(evaluator.corpus)),
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


def bm25_ccpm_accuracy(records: Sequence[CCPMRecord], tokenize: Callable[[str], list[str]]) -> float:
    """CCPM accuracy when the choice with the highest BM25 score (IDF over all the file's choices) is the prediction."""
    retriever = bm25s.BM25()
    retriever.index([tokenize(choice) for record in records for choice in record.choices], show_progress=False)
    correct, start = 0, 0
    for record in records:
        tokens = tokenize(record.translation)
        stop = start + len(record.choices)
        scores = retriever.get_scores(tokens)[start:stop] if tokens else np.zeros(len(record.choices))
        correct += int(scores.argmax()) == record.answer
        start = stop
    return correct / len(records)
