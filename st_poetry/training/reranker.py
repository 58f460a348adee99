"""`just train-reranker`: a cross-encoder that reads a description and a line together.

    st-poetry train-reranker --data data/mined --model models/e5-small-zh --out models/reranker

A bi-encoder compares two vectors made apart; a cross-encoder attends across the description and the line,
which is what CCPM's near-identical choices call for, at the price of one forward pass per (query, line) pair.
So it reranks the few candidates a retriever returns (`st_poetry.retrieval.rerank`, which `just evaluate
--reranker` and `just search --reranker` use).

Training shares `just train`'s data readers and its whole loop (`st_poetry.training.train.fit`: checkpoints, resume,
pre-flight and post-training checks, curves, train_log.jsonl, summary, model card); what differs is chosen
here: the model, the loss and the evaluator.

The loss is the cross-encoder MultipleNegativesRankingLoss: each description's positive against its row's hard
negatives and `--in-batch-negatives` lines of other rows, one softmax over them. That is the task itself,
pick the right line out of a few similar ones (CCPM is exactly 1 of 4), and it needs no weighting of
positives against negatives as BinaryCrossEntropyLoss on labelled pairs would (1 positive to n negatives).
LambdaLoss optimizes NDCG over graded lists; with one relevant line per list it has nothing more to use.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sentence_transformers.base.sampler import BatchSamplers
from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator
from sentence_transformers.cross_encoder.losses import MultipleNegativesRankingLoss
from transformers import TrainerCallback, set_seed

from st_poetry.core.config import RerankConfig
from st_poetry.core.errors import UserError
from st_poetry.core.modeling import load_reranker
from st_poetry.core.schema import MINED
from st_poetry.training.train import Recipe, TrainSummary, fit, load_training_data, set_model_card

EVALUATOR_NAME = "poetry-rerank"
HEADLINE = {"MRR@10": "mrr@10", "NDCG@10": "ndcg@10", "MAP": "map"}
BEST_METRIC = "ndcg@10"


def evaluator_samples(rows: Iterable[dict]) -> list[dict]:
    """Eval rows (anchor, positive, negative_1..k) as the reranking evaluator's samples: the positive among them."""
    return [
        {
            "query": row["anchor"],
            "positive": [row["positive"]],
            "negative": MINED.negatives(row),
        }
        for row in rows
    ]


def train(config: RerankConfig, callbacks: Sequence[TrainerCallback] = ()) -> TrainSummary | None:
    """Train a reranker from `config.model` on `config.data` into `config.out`; returns the summary."""
    set_seed(config.seed)  # a new head is initialised at random: seeded, two runs train the same model
    model = load_reranker(config.model, max_seq_length=config.max_seq_length, base=True)
    set_model_card(model, config.model, "reranker for classical Chinese poetry lines and their modern descriptions")
    data = load_training_data(config)
    if data.stats.negatives_per_row == 0:
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
