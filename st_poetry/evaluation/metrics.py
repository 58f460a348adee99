"""Retrieval metrics shared by training and `just evaluate`: one evaluator builder, so both score the same way.

Also here: CCPM multiple-choice accuracy. The lexical (BM25) side lives in `st_poetry.retrieval.lexical`, so training,
which imports this module, does not pull in jieba and bm25s.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from sentence_transformers.util import cos_sim

from st_poetry.core.errors import UserError
from st_poetry.core.files import read_jsonl
from st_poetry.data.prepare import EMPTY_TRANSLATION, parse_ccpm
from st_poetry.data.records import Skip

EVALUATOR_NAME = "poetry-eval"
SCORE_FUNCTION = "cosine"


def evaluator_embeddings(
    evaluator: InformationRetrievalEvaluator, model: SentenceTransformer, side: Literal["query", "document"]
) -> torch.Tensor:
    """The evaluator's queries or corpus (documents) encoded as the evaluator itself encodes them, for reuse."""
    if side == "query":
        texts, prompt_name, prompt = evaluator.queries, evaluator.query_prompt_name, evaluator.query_prompt
    else:
        texts, prompt_name, prompt = evaluator.corpus, evaluator.corpus_prompt_name, evaluator.corpus_prompt
    return evaluator.embed_inputs(model, texts, encode_fn_name=side, prompt_name=prompt_name, prompt=prompt)


Ranking = list[list[dict[str, Any]]]
"""Per query, its ranked lines as {"corpus_id", "score"}: what the evaluator's metric code (compute_metrics) scores."""


class RankingEvaluator(InformationRetrievalEvaluator):
    """The IR evaluator, which can hand back the ranking behind a model's metrics (what a reranker then reorders).

    The ranking is the return value of the call that made it (`ranked`): nothing is kept between calls.
    """

    _rankings: list[Ranking] | None = None

    def compute_metrics(self, queries_result_list: Ranking) -> dict:
        if self._rankings is not None:
            self._rankings.append(queries_result_list)
        return super().compute_metrics(queries_result_list)

    def ranked(self, model: SentenceTransformer) -> tuple[dict[str, float], Ranking]:
        """`retrieval_metrics` of the model, and the ranking they scored."""
        self._rankings = rankings = []
        try:
            results = self(model)
        finally:
            self._rankings = None
        (ranking,) = rankings  # one score function: cosine
        return called_metrics(results), ranking


MAP_CUTOFF = 100


def build_ir_evaluator(
    eval_rows: Iterable[Mapping],
    corpus_rows: Iterable[Mapping],
    *,
    max_corpus: int | None = None,
    seed: int = 42,
    batch_size: int = 64,
    show_progress_bar: bool = False,
    rank_depth: int = MAP_CUTOFF,
) -> RankingEvaluator:
    """Each distinct eval anchor is a query; its relevant documents are the corpus entries of its positives.

    `max_corpus` keeps every relevant line and samples the remaining distractors (seeded), so an eval
    during training stays fast on a large corpus. The evaluator encodes with each model's encode_query and
    encode_document, so every model gets its own prompts from the one evaluator. It ranks each query's top
    `rank_depth` lines (at least 100, MAP@100's): as deep as a reranker will look.
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
        keep = sample_pool(corpus, set().union(*relevant.values()), max_corpus, seed)
        corpus = {corpus_id: text for corpus_id, text in corpus.items() if corpus_id in keep}

    return RankingEvaluator(
        queries={query_id: anchor for anchor, query_id in query_id_of.items()},
        corpus=corpus,
        relevant_docs=relevant,
        accuracy_at_k=[1, 5, 10],
        precision_recall_at_k=[1, 5, 10],
        mrr_at_k=[10],
        ndcg_at_k=[10],
        map_at_k=sorted({MAP_CUTOFF, rank_depth}),  # the deepest cutoff is how many lines a ranking keeps
        score_functions={SCORE_FUNCTION: cos_sim},  # the metric keys name it, whatever a model's own similarity
        batch_size=batch_size,
        show_progress_bar=show_progress_bar,
        name=EVALUATOR_NAME,
        write_csv=False,
    )


def max_k(evaluator: InformationRetrievalEvaluator) -> int:
    """The deepest rank any of the evaluator's metrics looks at: how many ranked lines a query needs."""
    cutoffs = (
        evaluator.mrr_at_k,
        evaluator.ndcg_at_k,
        evaluator.accuracy_at_k,
        evaluator.map_at_k,
        evaluator.precision_recall_at_k,
    )
    return max(max(ks) for ks in cutoffs)


def sample_pool(items: Iterable[str], keep: set[str], size: int, seed: int) -> set[str]:
    """`keep` and a seeded sample of the other items, `size` in all (or all of `keep` when it is larger)."""
    others = sorted(set(items) - keep)
    return keep | set(random.Random(seed).sample(others, max(0, min(len(others), size - len(keep)))))


def metric_key(metric: str) -> str:
    """The key an evaluator built here reports `metric` (e.g. "ndcg@10", "recall@1") under."""
    return f"{EVALUATOR_NAME}_{SCORE_FUNCTION}_{metric}"


# ---------------------------------------------------------------------------------------------------------
# Metrics `just evaluate` reports, and CCPM multiple-choice accuracy.

RETRIEVAL_METRICS = ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10", "map@100")


def reported_metrics(scores: Mapping[str, Mapping[int, float]]) -> dict[str, float]:
    """Pick RETRIEVAL_METRICS out of InformationRetrievalEvaluator.compute_metrics' {"recall@k": {1: ...}} dict."""
    picked = {}
    for metric in RETRIEVAL_METRICS:
        family, k = metric.split("@")
        picked[metric] = float(scores[f"{family}@k"][int(k)])
    return picked


def called_metrics(results: Mapping[str, float]) -> dict[str, float]:
    """Pick RETRIEVAL_METRICS out of what calling an evaluator built here returns ({metric_key(metric): value})."""
    return {metric: float(results[metric_key(metric)]) for metric in RETRIEVAL_METRICS}


def retrieval_metrics(evaluator: InformationRetrievalEvaluator, model: SentenceTransformer) -> dict[str, float]:
    """Run the evaluator on `model` (it encodes the queries and the whole corpus once) and keep the reported metrics."""
    return called_metrics(evaluator(model))


class CCPMRecord(NamedTuple):
    translation: str
    choices: list[str]
    answer: int


def read_ccpm(path: str | Path) -> tuple[list[CCPMRecord], int]:
    """Read a CCPM-format .jsonl file (translation, choices, answer) -> (records, skipped).

    Records are checked and cleaned by the same parser as `just prepare`; a malformed one names its file:line.
    Records with an empty translation are skipped and counted: nothing to match.
    """
    records, skipped = [], 0
    for line_no, row in read_jsonl(path):
        if not isinstance(row, dict):
            raise UserError(f"{path}:{line_no}: a CCPM record must be a JSON object")
        try:
            parsed = parse_ccpm(row, str(path), line_no)
        except Skip as reason:
            if str(reason) != EMPTY_TRANSLATION:
                raise UserError(f"{path}:{line_no}: {reason}") from None
            skipped += 1
            continue
        ((translation, _),) = parsed.pairs
        records.append(CCPMRecord(translation, parsed.texts, row["answer"]))
    if not records:
        raise UserError(f"{path}: no CCPM records")
    return records, skipped


def ccpm_records_from_eval(eval_rows: Iterable[Mapping]) -> list[CCPMRecord]:
    """The CCPM records held out in a prepared eval split (PAIR rows): the translation against its four choices.

    `just prepare` keeps a CCPM record's wrong choices as the row's given negatives. The choices are sorted
    so the answer's position carries no hint (a scorer that ties would otherwise always pick it).
    """
    records = []
    for row in eval_rows:
        if row["source"] == "ccpm" and row["negatives"]:
            choices = sorted({row["positive"], *row["negatives"]})
            records.append(CCPMRecord(row["anchor"], choices, choices.index(row["positive"])))
    return records


def ccpm_scores(
    model: SentenceTransformer | CrossEncoder,
    records: Sequence[CCPMRecord],
    *,
    batch_size: int = 64,
    show_progress_bar: bool = False,
) -> list[np.ndarray]:
    """Each record's choices scored against its translation, by either kind of model (the CCPM paper's two tasks):

    - a bi-encoder: the similarity of the translation, encoded as a query, to each choice, encoded as a document
      (only the records' own texts are encoded);
    - a cross-encoder (a reranker): its score of the translation read together with each choice.
    """
    counts = [len(record.choices) for record in records]
    if isinstance(model, CrossEncoder):
        pairs = [(record.translation, choice) for record in records for choice in record.choices]
        scores = model.predict(pairs, batch_size=batch_size, show_progress_bar=show_progress_bar)
        return np.split(scores, np.cumsum(counts)[:-1])
    queries = model.encode_query(
        [record.translation for record in records],
        batch_size=batch_size,
        show_progress_bar=show_progress_bar,
        convert_to_tensor=True,
    )
    choices = model.encode_document(
        [choice for record in records for choice in record.choices],
        batch_size=batch_size,
        show_progress_bar=show_progress_bar,
        convert_to_tensor=True,
    )
    repeats = torch.tensor(counts, device=queries.device)
    scores = model.similarity_pairwise(queries.repeat_interleave(repeats, dim=0), choices)
    return [row.float().cpu().numpy() for row in scores.split(counts)]


def choice_accuracy(records: Sequence[CCPMRecord], scores: Sequence[np.ndarray]) -> float:
    """Share of records whose answer is the choice scored highest."""
    return sum(int(row.argmax()) == r.answer for row, r in zip(scores, records, strict=True)) / len(records)


def ccpm_accuracy(
    model: SentenceTransformer | CrossEncoder,
    records: Sequence[CCPMRecord],
    *,
    batch_size: int = 64,
    show_progress_bar: bool = False,
) -> float:
    """Share of records whose answer is the choice the model scores highest against the translation (ccpm_scores)."""
    return choice_accuracy(
        records, ccpm_scores(model, records, batch_size=batch_size, show_progress_bar=show_progress_bar)
    )
