"""Lexical retrieval: BM25 (bm25s) over jieba words or single characters, the baseline a user would reach for and
the lexical side of hybrid search."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence

import bm25s
import jieba
import numpy as np

jieba.setLogLevel(logging.WARNING)  # not its "Building prefix dict" chatter on every run


def jieba_words(text: str) -> list[str]:
    """jieba word segmentation, punctuation and spaces dropped."""
    return [word for word in jieba.lcut(text) if any(ch.isalnum() for ch in word)]


def single_chars(text: str) -> list[str]:
    """Every letter/character on its own: classical poetry has no reliable word boundaries. Interned: a corpus's
    token lists then point at one string per character instead of a new object per occurrence."""
    return [sys.intern(ch) for ch in text if ch.isalnum()]


BM25_TOKENIZERS: dict[str, Callable[[str], list[str]]] = {"bm25-jieba": jieba_words, "bm25-chars": single_chars}
# The lexical side of hybrid search: single characters, which rank far better than jieba words on the eval split
# (docs/BENCHMARKS.md, "Hybrid retrieval").
HYBRID_LEXICAL = "bm25-chars"


def build_bm25(
    texts: Sequence[str], tokenize: Callable[[str], list[str]], *, show_progress: bool = False
) -> bm25s.BM25:
    """A bm25s index (Lucene BM25, k1=1.5, b=0.75) over `texts`; row i of the corpus is document i."""
    retriever = bm25s.BM25()
    retriever.index([tokenize(text) for text in texts], show_progress=show_progress)
    return retriever


def bm25_scores(retriever: bm25s.BM25, tokens: Sequence[str]) -> np.ndarray:
    """Every document's BM25 score for one tokenized query (all 0 when no token is in the index)."""
    if not tokens:
        return np.zeros(retriever.scores["num_docs"], dtype=np.float32)
    return retriever.get_scores(list(tokens))
