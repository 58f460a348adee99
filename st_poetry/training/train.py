"""`just train`: fine-tune a sentence-embedding model so a modern-Chinese description retrieves its poetry line.

    st-poetry train --data data/mined --model models/e5-small-zh --out models/e5-small-zh-poetry
    torchrun --nproc_per_node 2 -m st_poetry train ...   # several GPUs: same flags, negatives gathered across them

The steps follow sentence-transformers' training examples: 1. load the base model (with its prompts), 2. load
the data, 3. the training arguments, 4. the loss, 5. evaluate the base model, 6. train, 7. evaluate again and
check that the kept model is the best one, 8. save.

`--data` is a mined folder (anchor, positive, negative_1..n), a prepared folder (anchor, positive, negatives)
or a FlagEmbedding .jsonl (query, pos, neg; a seeded share of the queries is held out for eval). Each row
keeps its first `--num-negatives` negatives, capped at the longest row's count; a shorter row is topped up
with positives of other rows drawn at random (seeded, counted): random negatives are valid negatives, and the
loss needs every row to have the same columns.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any, NamedTuple

import torch
from datasets import Dataset
from sentence_transformers import (
    CrossEncoder,
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from sentence_transformers.base.sampler import BatchSamplers
from sentence_transformers.sentence_transformer.losses import (
    CachedMultipleNegativesRankingLoss,
    MultipleNegativesRankingLoss,
)
from transformers import EarlyStoppingCallback, PrinterCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from st_poetry.core.config import FitConfig, TrainConfig
from st_poetry.core.errors import UserError
from st_poetry.core.files import apply_umask, atomic_output_dir, write_json, write_jsonl
from st_poetry.core.log import get_logger, get_verbosity
from st_poetry.core.modeling import BI_ENCODER, CROSS_ENCODER, load_model, model_kind
from st_poetry.core.prompts import document_prompt, query_prompt
from st_poetry.core.schema import CORPUS, mined_row, read_split, require_files
from st_poetry.core.tables import format_table
from st_poetry.data.prepare import Input, SourceStats, is_eval_group, read_records
from st_poetry.evaluation.metrics import build_ir_evaluator, metric_key
from st_poetry.evaluation.plots import plot_training_curves

logger = get_logger(__name__)
CHECKPOINTS = FitConfig.CHECKPOINTS
TRAIN_LOG = "train_log.jsonl"
CURVES = "training_curves.png"
SUMMARY = "train_summary.json"
FINAL_MARKER = FitConfig.MARKER
BEST_METRIC = "ndcg@10"
HEADLINE = {"Recall@1": "recall@1", "Recall@10": "recall@10", "MRR@10": "mrr@10", "NDCG@10": "ndcg@10"}
# The final model is re-evaluated after training; it must score what its checkpoint scored when it was best.
BEST_TOLERANCE = 1e-3
# The model kinds a training stage trains: what they are, and the command that trains them.
KINDS = {
    BI_ENCODER: ("an embedding model (bi-encoder)", "just train"),
    CROSS_ENCODER: ("a reranker (cross-encoder)", "just train-reranker"),
}
FOLDER_WANTED = "a folder from `just mine` or `just prepare` (train/eval/corpus.jsonl), or a FlagEmbedding .jsonl file"


# ---------------------------------------------------------------------------------------------------------
# Data


class Pair(NamedTuple):
    """A row as read, whatever its file's format: its negatives in order, as many as it has."""

    anchor: str
    positive: str
    negatives: list[str]


@dataclass
class DataStats:
    """What was read and how the rows were built: train_summary.json's "data"."""

    data: str  # --data
    kind: str  # flagembedding, or the row type of a folder (schema: prepared, mined)
    train_rows: int
    eval_rows: int  # after --eval-max-rows
    eval_rows_in_split: int
    corpus: int
    negatives_per_row: int
    negatives_topped_up: dict[str, int]  # split -> negatives drawn from other rows' positives
    skipped: dict[str, int]  # reason -> FlagEmbedding records or pairs left out


@dataclass
class TrainingData:
    train: Dataset  # columns anchor, positive, negative_1..k: what the trainer trains on
    eval: Dataset  # the same columns: the eval loss, and the evaluator's queries
    corpus: list[dict[str, Any]]  # schema.CORPUS rows: the retrieval evaluator's candidates
    stats: DataStats


def _read_split(path: Path) -> tuple[str, list[Pair]]:
    """A prepared or mined split -> (its row type's name, its rows, negatives without nulls)."""
    split = read_split(path)
    rows = [Pair(row["anchor"], row["positive"], split.type.negatives(row)) for row in split.rows]
    return split.type.name, rows


def _read_flagembedding(path: Path, config: FitConfig) -> tuple[list[Pair], list[Pair], list[dict], Counter]:
    """FlagEmbedding rows -> (train, eval, corpus, skipped): a row per (query, pos); queries split by seeded hash.

    Records are read and checked by `just prepare`'s reader, and its rules apply: a repeated pair is kept once,
    and an eval pair whose positive is also a train positive is dropped (it would flatter the eval scores).
    """
    stats: dict[str, SourceStats] = {}
    pairs: dict[tuple[str, str], tuple[tuple[str, ...], bool]] = {}  # (query, pos) -> (negatives, is_eval)
    texts: dict[str, None] = {}
    skipped: Counter = Counter()
    for _, parsed in read_records([Input("flagembedding", path, False, path.name)], frozenset(), stats):
        texts.update(dict.fromkeys(parsed.texts))
        is_eval = is_eval_group(parsed.pairs[0][0], config.seed, config.eval_fraction)
        for pair in parsed.pairs:
            if pair in pairs:
                skipped["duplicate pair"] += 1
            else:
                pairs[pair] = (parsed.negatives, is_eval)
    skipped.update(stats["flagembedding"].skipped)
    train_positives = {positive for (_, positive), (_, is_eval) in pairs.items() if not is_eval}
    train, evaluation = [], []
    for (anchor, positive), (negatives, is_eval) in pairs.items():
        if is_eval and positive in train_positives:
            skipped["eval pair whose positive is a train positive"] += 1
            continue
        (evaluation if is_eval else train).append(Pair(anchor, positive, list(negatives)))
    if not train or not evaluation:
        raise UserError(f"{path}: too few usable queries to hold out {config.eval_fraction:.0%} for eval")
    corpus = [{"id": f"c{index}", "text": text} for index, text in enumerate(texts)]
    return train, evaluation, corpus, skipped


def with_negative_columns(rows: list[Pair], k: int, pool: Sequence[str], seed: int) -> tuple[list[dict], int]:
    """Rows as anchor, positive, negative_1..k; short rows are topped up from `pool` at random (seeded).

    Returns the rows and how many negatives were drawn from the pool.
    """
    pool = list(dict.fromkeys(pool))
    if k and len(pool) <= k:
        raise UserError(f"only {len(pool)} distinct positives: too few to top up rows to {k} negatives")
    rng = random.Random(seed)
    filled, out = 0, []
    for row in rows:
        negatives = row.negatives[:k]
        taken = {row.positive, *negatives}
        while len(negatives) < k:
            candidate = rng.choice(pool)
            if candidate not in taken:
                negatives.append(candidate)
                taken.add(candidate)
                filled += 1
        out.append(mined_row(row.anchor, row.positive, negatives))
    return out, filled


def load_training_data(config: FitConfig) -> TrainingData:
    """Read --data (mined folder, prepared folder or FlagEmbedding .jsonl) into equal-width training rows."""
    data = Path(config.data)
    skipped: Counter = Counter()
    if data.is_file() and data.suffix == ".jsonl":
        kind = "flagembedding"
        train, evaluation, corpus, skipped = _read_flagembedding(data, config)
    else:
        require_files(data, ("train.jsonl", "eval.jsonl", "corpus.jsonl"), FOLDER_WANTED)
        (kind, train), (eval_kind, evaluation) = _read_split(data / "train.jsonl"), _read_split(data / "eval.jsonl")
        if train and evaluation and eval_kind != kind:
            raise UserError(f"--data {data}: train.jsonl holds {kind} rows but eval.jsonl {eval_kind} rows")
        corpus = CORPUS.read(data / "corpus.jsonl")
    if not train or not evaluation:
        raise UserError(f"--data {data}: the train or eval split is empty")
    if len(train) < 2:
        raise UserError(
            f"--data {data}: only 1 train row; the loss learns by telling a row's line from the other rows' texts, "
            "so training needs at least 2"
        )

    full_eval = len(evaluation)
    if config.eval_max_rows is not None and len(evaluation) > config.eval_max_rows:
        keep = sorted(random.Random(config.seed).sample(range(len(evaluation)), config.eval_max_rows))
        evaluation = [evaluation[index] for index in keep]

    k = min(config.num_negatives, max(len(row.negatives) for row in train))
    train_positives = [row.positive for row in train]
    train_rows, train_filled = with_negative_columns(train, k, train_positives, config.seed)
    eval_pool = [row.positive for row in evaluation] + train_positives
    eval_rows, eval_filled = with_negative_columns(evaluation, k, eval_pool, config.seed)
    stats = DataStats(
        data=str(data),
        kind=kind,
        train_rows=len(train_rows),
        eval_rows=len(eval_rows),
        eval_rows_in_split=full_eval,
        corpus=len(corpus),
        negatives_per_row=k,
        negatives_topped_up={"train": train_filled, "eval": eval_filled},
        skipped=dict(skipped),
    )
    return TrainingData(Dataset.from_list(train_rows), Dataset.from_list(eval_rows), corpus, stats)


# ---------------------------------------------------------------------------------------------------------
# Callbacks


class SaveEachNewBest(TrainerCallback):
    """Checkpoint every evaluation that beats the best so far, even between regular saves.

    `load_best_model_at_end` can only load a saved step: with `save_every_evals > 1` the best evaluation could
    otherwise fall between checkpoints. Runs before the trainer records the new best and decides to save.
    """

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(args.metric_for_best_model)
        if value is not None and (state.best_metric is None or value > state.best_metric):
            control.should_save = True


class CheckpointModes(TrainerCallback):
    """Give each saved checkpoint's files the user's umask (files.apply_umask), as publish_model does the final
    model's: the weights are written 0600, and a checkpoint is a model that another user may load."""

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if state.is_world_process_zero and checkpoint.is_dir():
            apply_umask(checkpoint)


class JsonlLog(TrainerCallback):
    """Rewrite train_log.jsonl from the trainer's own log_history at every log (restored on resume, so it stays whole).

    `first` holds records from before training (the base model's evaluation, at step 0).
    """

    def __init__(self, path: Path, first: list[dict]) -> None:
        self.path, self.first = path, first

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero:
            write_jsonl(self.path, [*self.first, *state.log_history])


class WholeRunLoss(TrainerCallback):
    """Make the final `train_loss` the whole run's mean, also after --resume (the trainer's covers this session only).

    The train loss is also logged at every evaluation and save, so the log history that a checkpoint restores holds
    the loss of every step before it.
    """

    def __init__(self, resumed_at: int | None) -> None:
        self.resumed_at = resumed_at or 0

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_evaluate or control.should_save:
            control.should_log = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.resumed_at and "train_loss" in (logs or {}):
            logged = [(entry["step"], entry["loss"]) for entry in state.log_history if "loss" in entry]
            logged = [(step, loss) for step, loss in logged if step <= self.resumed_at]
            steps = [0] + [step for step, _ in logged]
            total = sum(loss * (step - previous) for (step, loss), previous in zip(logged, steps, strict=False))
            before = total / steps[-1] * self.resumed_at if logged else 0.0
            after = logs["train_loss"] * (state.global_step - self.resumed_at)
            logs["train_loss"] = state.log_history[-1]["train_loss"] = (before + after) / state.global_step


# ---------------------------------------------------------------------------------------------------------
# The stage


def _device_args() -> dict[str, bool]:
    """bf16 where the GPU supports it, else fp16 on a GPU; fp32 on CPU. The weights stay fp32 either way.

    On CPU `use_cpu` is what makes transformers run DDP (gloo) under torchrun instead of one process per copy.
    """
    if not torch.cuda.is_available():
        return {"use_cpu": True}
    return {"bf16": True} if torch.cuda.is_bf16_supported() else {"fp16": True}


def column_prompts(model: SentenceTransformer, columns: Sequence[str]) -> dict[str, str] | None:
    """The anchor gets the model's query prompt, every other column its document prompt, as at inference."""
    prompts = {}
    if query := query_prompt(model):
        prompts[columns[0]] = query
    if document := document_prompt(model):
        prompts.update(dict.fromkeys(columns[1:], document))
    return prompts or None


def _is_complete(checkpoint: Path) -> bool:
    """The trainer writes trainer_state.json last: a checkpoint without a readable one was cut off while saving."""
    try:
        json.loads((checkpoint / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def saved_checkpoints(out: str | Path) -> list[Path]:
    """The checkpoint folders a training run in `out` kept, in step order (complete or not)."""
    folder = Path(out) / CHECKPOINTS
    found = folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if folder.is_dir() else []
    return sorted((path for path in found if path.name.rsplit("-", 1)[-1].isdigit()), key=checkpoint_step)


def _resume_checkpoint(out: Path, resume: bool, is_main: bool, kind: str) -> str | None:
    """The checkpoint to resume from; a fresh run refuses a non-empty --out rather than mixing two runs.

    Incomplete checkpoints (a run killed while saving) are skipped and removed, so that the resumed run can save
    that step again; the last complete one is used. A checkpoint of the other model `kind` (BI_ENCODER or
    CROSS_ENCODER: `just train` vs `just train-reranker`) is refused, before its optimizer state fails to load.
    """
    if resume:
        folder = out / CHECKPOINTS
        found = saved_checkpoints(out)
        complete = [path for path in found if _is_complete(path)]
        if not complete:
            raise UserError(f"--resume: no complete checkpoint in {folder}")
        found_kind = model_kind(str(complete[-1]))
        if found_kind in KINDS and found_kind != kind:
            (theirs, command), (ours, this) = KINDS[found_kind], KINDS[kind]
            raise UserError(
                f"--resume: {out} holds a `{command}` run: its checkpoints are {theirs}, not {ours}; continue it "
                f"with `{command} --resume`, or give `{this}` another --out"
            )
        if is_main:
            for path in found[found.index(complete[-1]) + 1 :]:
                logger.info(f"note: {path} is incomplete (no {TRAINER_STATE_NAME}: cut off while saving); removed it")
                shutil.rmtree(path)
            logger.info(f"resuming from {complete[-1]}")
        return str(complete[-1])
    if is_main and out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty: pass --resume to continue its last checkpoint, or choose another --out")
    return None


def checkpoint_step(checkpoint: str | Path | None) -> int | None:
    return int(str(checkpoint).rsplit("-", 1)[-1]) if checkpoint else None


def _training_speed(log: list[dict], resumed_at: int | None, samples_per_step: int) -> dict[str, float | None]:
    """This run's training time and samples/s with its evaluations taken out.

    The trainer's own train_samples_per_second counts the evaluations inside training as training time.
    """
    end = next((entry for entry in reversed(log) if "train_runtime" in entry), None)
    if end is None:
        return {"train_runtime_s": None, "eval_runtime_s": None, "train_samples_per_second": None}
    start = resumed_at or 0
    eval_s = sum(entry["eval_runtime"] for entry in log if "eval_runtime" in entry and entry["step"] > start)
    steps_s = end["train_runtime"] - eval_s
    return {
        "train_runtime_s": end["train_runtime"],
        "eval_runtime_s": round(eval_s, 3),
        "train_samples_per_second": (end["step"] - start) * samples_per_step / steps_s if steps_s > 0 else None,
    }


def publish_model(model: SentenceTransformer | CrossEncoder, out: Path) -> None:
    """Save the final model into `out`, beside the checkpoints and logs, whole or not at all.

    config.json and modules.json go in last: without modules.json the folder does not load as this model
    (and with config.json alone it would load as a plain checkpoint).
    """
    with atomic_output_dir(out, FINAL_MARKER, merge=True, last=("config.json",)) as staging:
        model.save_pretrained(str(staging))


def load_base_model(config: TrainConfig) -> SentenceTransformer:
    """The model to fine-tune; `--query-instruction` becomes its query prompt, which the saved model records."""
    model = load_model(
        config.model,
        max_seq_length=config.max_seq_length,
        query_instruction=config.query_instruction,
        replace_query_prompt=True,
    )
    set_model_card(model, config.model, "fine-tuned to retrieve classical Chinese poetry")
    return model


def set_model_card(model: SentenceTransformer | CrossEncoder, base: str, purpose: str) -> None:
    """The card's language and name; no Hub look-up for a local base model."""
    model.model_card_data.set_language("zh")
    model.model_card_data.model_name = f"{Path(base).name} {purpose}"
    model.model_card_data.local_files_only = Path(base).expanduser().is_dir()


@dataclass
class Recipe:
    """What a training stage chooses; `fit` runs everything else the same way for a bi-encoder and a reranker."""

    model: SentenceTransformer | CrossEncoder  # its model card data filled in
    trainer_class: type[Trainer]
    args_class: type[TrainingArguments]
    args: dict[str, Any]  # training arguments this stage chooses (prompts; a batch sampler a config may override)
    loss: Callable[[TrainingArguments], torch.nn.Module]  # built once the arguments say how many processes run
    evaluator: Callable[[Any], dict[str, float]]  # a sentence-transformers evaluator
    best: str  # the evaluator's metric key that picks the best checkpoint
    headline: dict[str, str]  # the summary's table: label -> the evaluator's metric key


@dataclass
class TrainSummary:
    """What a training run did and scored: train_summary.json, these fields as its keys, in this order."""

    model: str  # the base model
    out: str
    data: DataStats
    global_step: int
    max_steps: int
    loss: str  # the loss's class
    stopped_early: bool
    best_step: int  # the saved model's checkpoint
    train_loss: float  # the whole run's mean
    before: dict[str, float]  # the headline metrics (the recipe's labels) of the base model
    after: dict[str, float]  # ... and of the saved model
    before_all: dict[str, float]  # every metric the evaluator reports
    after_all: dict[str, float]
    train_runtime_s: float | None  # _training_speed: this session's time, evaluations excluded from the speed
    eval_runtime_s: float | None
    train_samples_per_second: float | None
    wall_s: float
    config: dict[str, Any]  # the stage's options


def train(config: TrainConfig, callbacks: Sequence[TrainerCallback] = ()) -> TrainSummary | None:
    """Fine-tune `config.model` on `config.data` into `config.out`; returns the summary (also train_summary.json),
    None on every process but the first.

    `callbacks` are added to the trainer's (tests use one to interrupt a run).
    """
    # 1. The base model. A plain HF checkpoint becomes Transformer + CLS pooling + Normalize; a
    #    sentence-transformers model keeps its pooling and prompts; --query-instruction becomes its query prompt.
    model = load_base_model(config)

    # 2. The data: every row has the same columns, anchor, positive, negative_1..k.
    data = load_training_data(config)

    # 4. The loss: InfoNCE over the positive, the row's negatives and every other text in the batch (on every
    #    process when several run, like FlagEmbedding's --negatives_cross_device), at bge's temperature 0.02.
    #    The cached variant adds a forward pass without gradients so that memory no longer grows with the batch.
    def loss(args: TrainingArguments) -> torch.nn.Module:
        gather = args.world_size > 1
        if config.cached_loss:
            return CachedMultipleNegativesRankingLoss(
                model, scale=config.scale, mini_batch_size=config.mini_batch_size, gather_across_devices=gather
            )
        return MultipleNegativesRankingLoss(model, scale=config.scale, gather_across_devices=gather)

    recipe = Recipe(
        model=model,
        trainer_class=SentenceTransformerTrainer,
        args_class=SentenceTransformerTrainingArguments,
        args={
            "prompts": column_prompts(model, data.train.column_names),
            "batch_sampler": BatchSamplers.NO_DUPLICATES,  # famous lines recur: no duplicate text within a batch
        },
        loss=loss,
        evaluator=build_ir_evaluator(data.eval, data.corpus, max_corpus=config.eval_max_corpus, seed=config.seed),
        best=metric_key(BEST_METRIC),
        headline={label: metric_key(metric) for label, metric in HEADLINE.items()},
    )
    return fit(config, data, recipe, callbacks)


def fit(
    config: FitConfig, data: TrainingData, recipe: Recipe, callbacks: Sequence[TrainerCallback] = ()
) -> TrainSummary | None:
    """Steps 3 and 5-8 of a training stage, the same for every model kind: arguments, the pre-flight evaluation,
    training with the best checkpoint kept, the post-training check, curves, summary and the published model."""
    started = time.time()
    out = Path(config.out)
    model = recipe.model

    # 3. Training arguments: the stage's defaults, then the config's (its fields that name a trainer argument, then
    #    every other one given), then what the stage derives. --batch-size is per process.
    metric_for_best = f"eval_{recipe.best}"
    given = config.training_arguments()
    defaults = {
        "per_device_eval_batch_size": config.batch_size,
        "report_to": ["tensorboard"] if find_spec("tensorboard") else "none",
        "restore_callback_states_from_checkpoint": True,  # early stopping resumes with its patience count
        **({} if given.keys() & {"use_cpu", "bf16", "fp16"} else _device_args()),
        **recipe.args,
    }
    derived = {  # FitConfig.DERIVED: the best checkpoint, by the evaluator, becomes the final model
        "output_dir": str(out / CHECKPOINTS),
        "run_name": out.name,
        "eval_strategy": "steps",
        "save_strategy": "steps",
        "save_steps": config.eval_steps * config.save_every_evals,
        "load_best_model_at_end": True,
        "metric_for_best_model": metric_for_best,
        "greater_is_better": True,
    }
    try:
        args = recipe.args_class(**defaults | given | derived)
    except (TypeError, ValueError) as error:  # a trainer argument the library refuses
        raise UserError(f"training arguments: {error}") from None
    is_main = args.process_index == 0
    kind = CROSS_ENCODER if isinstance(model, CrossEncoder) else BI_ENCODER
    resume_from = _resume_checkpoint(out, config.resume, is_main, kind)
    samples_per_step = config.batch_size * args.world_size * args.gradient_accumulation_steps
    steps_per_epoch = math.ceil(len(data.train) / samples_per_step)
    total_steps = config.max_steps if config.max_steps > 0 else math.floor(config.epochs * steps_per_epoch)
    if total_steps < config.eval_steps:
        raise UserError(
            f"training runs {total_steps} steps, fewer than --eval-steps {config.eval_steps}: no evaluation would run"
        )
    loss = recipe.loss(args)
    logger.debug(
        f"{total_steps} steps of {config.batch_size} rows x {args.world_size} processes on {args.device}, "
        f"{type(loss).__name__}, resuming from {resume_from or 'nothing'}"
    )

    # 5. Evaluate the base model. This is the "before" score, and it proves that the evaluator reports the key
    #    metric_for_best_model names (a missing key is what broke the FlagEmbedding seed run).
    evaluator = recipe.evaluator
    before = evaluator(model)
    if recipe.best not in before:
        raise RuntimeError(
            f"the evaluator reports {sorted(before)}, not {recipe.best!r}: "
            f"metric_for_best_model={metric_for_best!r} would never be found"
        )
    base_record = {"epoch": 0.0, "step": 0, **{f"eval_{key}": value for key, value in before.items()}}

    # 6. Train, keeping the best checkpoint by the best metric and stopping when it stops improving.
    trainer = recipe.trainer_class(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        loss=loss,
        evaluator=evaluator,
        callbacks=[
            EarlyStoppingCallback(early_stopping_patience=config.patience),
            SaveEachNewBest(),
            CheckpointModes(),
            WholeRunLoss(checkpoint_step(resume_from)),
            JsonlLog(out / TRAIN_LOG, [base_record]),
            *callbacks,
        ],
    )
    if get_verbosity() > logging.INFO:  # -q hid the progress bar: not the per-step lines that replace it either
        trainer.remove_callback(PrinterCallback)
    trainer.train(resume_from_checkpoint=resume_from)
    if not trainer.is_world_process_zero():
        return None

    # 7. Evaluate the model that will be saved: it must be the best checkpoint, with the score it had then. A loss
    #    of exactly 0 at every step means that no batch held a second candidate: nothing was learned.
    state = trainer.state
    train_loss = next(entry["train_loss"] for entry in reversed(state.log_history) if "train_loss" in entry)
    if train_loss == 0:
        raise UserError(
            f"the training loss was 0 at every step: no batch held more than one row and the rows have no "
            f"negatives, so nothing was learned and nothing is saved as final (--data {config.data}: rows that "
            "share a text never share a batch; give more distinct rows or rows with negatives)"
        )
    after = evaluator(model)
    best_step = checkpoint_step(state.best_model_checkpoint)
    if best_step is None or abs(after[recipe.best] - state.best_metric) > BEST_TOLERANCE:
        raise RuntimeError(
            f"the final model scores {recipe.best} {after[recipe.best]:.4f}, but the best evaluation "
            f"recorded {state.best_metric} (checkpoint {state.best_model_checkpoint}): the best model was not "
            "loaded, so nothing is saved as final"
        )

    # 8. Save: curves, summary, then the model itself (its card carries the before/after scores). train_log.jsonl
    #    is whole already: JsonlLog rewrote it at the trainer's last log.
    log = [base_record, *state.log_history]
    best_label = next((label for label, key in recipe.headline.items() if key == recipe.best), recipe.best)
    plot_training_curves(log, out / CURVES, metric=metric_for_best, metric_label=best_label)
    speed = _training_speed(state.log_history, checkpoint_step(resume_from), samples_per_step)
    summary = TrainSummary(
        model=config.model,
        out=str(out),
        data=data.stats,
        global_step=state.global_step,
        max_steps=state.max_steps,
        loss=type(loss).__name__,
        stopped_early=state.global_step < state.max_steps,
        best_step=best_step,
        train_loss=train_loss,
        before={label: before[key] for label, key in recipe.headline.items()},
        after={label: after[key] for label, key in recipe.headline.items()},
        before_all=before,
        after_all=after,
        **speed,
        wall_s=round(time.time() - started, 1),
        config=vars(config),
    )
    write_json(out / SUMMARY, dataclasses.asdict(summary))
    publish_model(model, out)
    logger.info(format_summary(summary))
    return summary


def format_summary(summary: TrainSummary) -> str:
    data = summary.data
    topped = data.negatives_topped_up
    lines = [
        f"trained {summary.model} -> {summary.out}",
        f"  data: {data.kind} {data.data}: {data.train_rows:,} train rows, {data.eval_rows:,} eval rows "
        f"(of {data.eval_rows_in_split:,}), corpus {data.corpus:,}",
        f"  negatives per row: {data.negatives_per_row} (+ in-batch); topped up with random positives: "
        f"{topped['train']:,} train, {topped['eval']:,} eval",
    ]
    if data.skipped:
        lines.append(f"  skipped records: {json.dumps(data.skipped, ensure_ascii=False)}")
    stop = "early stopping" if summary.stopped_early else "the step budget"
    lines.append(
        f"  steps: {summary.global_step} of {summary.max_steps} (ended by {stop}), best {summary.best_step}; "
        f"mean train loss {summary.train_loss:.4f}"
    )
    if summary.train_samples_per_second:
        lines.append(
            f"  speed: {summary.train_samples_per_second:.2f} samples/s (the {summary.eval_runtime_s:.0f} s "
            f"of evaluations excluded); wall {summary.wall_s:.0f} s"
        )
    scores = [[name, *(f"{value:.4f}" for value in getattr(summary, name).values())] for name in ("before", "after")]
    lines.append(format_table(["eval split", *summary.before], scores, align="lr", indent="  "))
    lines.append(f"  written: model files, {CHECKPOINTS}/, {TRAIN_LOG}, {CURVES}, {SUMMARY}")
    return "\n".join(lines)
