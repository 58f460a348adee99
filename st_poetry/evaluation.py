"""Retrieval evaluation shared by training and `st_poetry.evaluate`: one builder, so both score the same way."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

from st_poetry.config import UserError
from st_poetry.modeling import document_prompt_name, query_prompt_name

EVALUATOR_NAME = "poetry-eval"
SCORE_FUNCTION = "cosine"


def build_ir_evaluator(
    eval_rows: Iterable[Mapping],
    corpus_rows: Iterable[Mapping],
    model: SentenceTransformer,
    *,
    max_corpus: int | None = None,
    seed: int = 42,
    batch_size: int = 64,
    name: str = EVALUATOR_NAME,
    show_progress_bar: bool = False,
) -> InformationRetrievalEvaluator:
    """Each distinct eval anchor is a query; its relevant documents are the corpus entries of its positives.

    `max_corpus` keeps every relevant line and samples the remaining distractors (seeded), so an eval
    during training stays fast on a large corpus. `model` only supplies its prompt names.
    """
    corpus = {str(row["id"]): row["text"] for row in corpus_rows}
    id_of_text: dict[str, str] = {}
    for corpus_id, text in corpus.items():
        id_of_text.setdefault(text, corpus_id)

    query_id_of: dict[str, str] = {}
    relevant: dict[str, set[str]] = {}
    for row in eval_rows:
        if row["positive"] not in id_of_text:
            raise UserError(f"eval positive {row['positive']!r} is not in the corpus: re-run `just prepare`")
        query_id = query_id_of.setdefault(row["anchor"], f"q{len(query_id_of)}")
        relevant.setdefault(query_id, set()).add(id_of_text[row["positive"]])
    if not relevant:
        raise UserError("the eval split is empty: nothing to evaluate")

    if max_corpus is not None and len(corpus) > max_corpus:
        keep = set().union(*relevant.values())
        others = sorted(set(corpus) - keep)
        keep.update(random.Random(seed).sample(others, max(0, min(len(others), max_corpus - len(keep)))))
        corpus = {corpus_id: text for corpus_id, text in corpus.items() if corpus_id in keep}

    return InformationRetrievalEvaluator(
        queries={query_id: anchor for anchor, query_id in query_id_of.items()},
        corpus=corpus,
        relevant_docs=relevant,
        accuracy_at_k=[1, 5, 10],
        precision_recall_at_k=[1, 5, 10],
        mrr_at_k=[10],
        ndcg_at_k=[10],
        map_at_k=[100],
        main_score_function=SCORE_FUNCTION,
        query_prompt_name=query_prompt_name(model),
        corpus_prompt_name=document_prompt_name(model),
        batch_size=batch_size,
        show_progress_bar=show_progress_bar,
        name=name,
        write_csv=False,
    )


def metric_key(metric: str, name: str = EVALUATOR_NAME) -> str:
    """The key an evaluator built here reports `metric` (e.g. "ndcg@10", "recall@1") under."""
    return f"{name}_{SCORE_FUNCTION}_{metric}"
