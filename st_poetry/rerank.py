"""`just train-reranker`: a cross-encoder that reads a description and a line together, and the reranking helper.

    python -m st_poetry.rerank --data data/mined --model ../shared/models/e5-small-zh --out models/reranker

A bi-encoder compares two vectors made apart; a cross-encoder attends across the description and the line,
which is what CCPM's near-identical choices call for, at the price of one forward pass per (query, line) pair.
So it reranks the few candidates a retriever returns: `rerank` takes any retriever's hits (a model's, BM25's,
a fusion's) and reorders the first K. `just evaluate --reranker` and `just search --reranker` use it.

Training shares `just train`'s data readers and its whole loop (`st_poetry.train.fit`: checkpoints, resume,
pre-flight and post-training checks, curves, train_log.jsonl, summary, model card); what differs is chosen
here: the model, the loss and the evaluator.

The loss is the cross-encoder MultipleNegativesRankingLoss: each description's positive against its row's hard
negatives and `--in-batch-negatives` lines of other rows, one softmax over them. That is the task itself,
pick the right line out of a few similar ones (CCPM is exactly 1 of 4), and it needs no weighting of
positives against negatives as BinaryCrossEntropyLoss on labelled pairs would (1 positive to n negatives).
LambdaLoss optimizes NDCG over graded lists; with one relevant line per list it has nothing more to use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sentence_transformers import CrossEncoder
from sentence_transformers.base.sampler import BatchSamplers
from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator
from sentence_transformers.cross_encoder.losses import MultipleNegativesRankingLoss
from transformers import TrainerCallback, set_seed

from st_poetry.config import RerankConfig, UserError, run_cli
from st_poetry.metrics import CCPMRecord, choice_accuracy
from st_poetry.modeling import load_reranker
from st_poetry.schema import MINED
from st_poetry.train import Recipe, fit, load_training_data, set_model_card

EVALUATOR_NAME = "poetry-rerank"
HEADLINE = {"MRR@10": "mrr@10", "NDCG@10": "ndcg@10", "MAP": "map"}
BEST_METRIC = "ndcg@10"


def evaluator_samples(rows: Sequence[dict]) -> list[dict]:
    """Eval rows (anchor, positive, negative_1..k) as the reranking evaluator's samples: the positive among them."""
    return [
        {
            "query": row["anchor"],
            "positive": [row["positive"]],
            "negative": MINED.negatives(row),
        }
        for row in rows
    ]


def train(config: RerankConfig, callbacks: Sequence[TrainerCallback] = ()) -> dict[str, Any]:
    """Train a reranker from `config.model` on `config.data` into `config.out`; returns the summary."""
    set_seed(config.seed)  # a new head is initialised at random: seeded, two runs train the same model
    model = load_reranker(config.model, max_seq_length=config.max_seq_length, base=True)
    set_model_card(model, config.model, "reranker for classical Chinese poetry lines and their modern descriptions")
    data = load_training_data(config)
    if data.stats["negatives_per_row"] == 0:
        raise UserError(
            f"--data {config.data}: its rows hold no negatives, and the evaluator ranks each eval positive among its "
            "row's negatives: mine some with `just mine`"
        )
    recipe = Recipe(
        model=model,
        trainer_class=CrossEncoderTrainer,
        args_class=CrossEncoderTrainingArguments,
        args={"batch_sampler": BatchSamplers.NO_DUPLICATES},  # an in-batch negative must not be the row's positive
        loss=lambda args: MultipleNegativesRankingLoss(model, num_negatives=config.in_batch_negatives),
        evaluator=CrossEncoderRerankingEvaluator(
            evaluator_samples(data.eval), at_k=10, name=EVALUATOR_NAME, batch_size=64, write_csv=False
        ),
        best=f"{EVALUATOR_NAME}_{BEST_METRIC}",
        headline={label: f"{EVALUATOR_NAME}_{metric}" for label, metric in HEADLINE.items()},
    )
    return fit(config, data, recipe, callbacks)


# ---------------------------------------------------------------------------------------------------------
# Reranking


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


def ccpm_accuracy(
    model: CrossEncoder, records: Sequence[CCPMRecord], *, batch_size: int = 64, show_progress_bar: bool = False
) -> float:
    """Share of CCPM records whose answer gets the reranker's highest score against the translation."""
    pairs = [(record.translation, choice) for record in records for choice in record.choices]
    scores = model.predict(pairs, batch_size=batch_size, show_progress_bar=show_progress_bar)
    return choice_accuracy(records, np.split(scores, np.cumsum([len(record.choices) for record in records])[:-1]))


def main(argv: list[str] | None = None) -> None:
    run_cli(RerankConfig, train, argv, prog="python -m st_poetry.rerank")


if __name__ == "__main__":
    main()
