"""`just train-reranker` and reranking on the tiny models: training output, the reranking helper, CCPM by the
reranker, `evaluate --reranker`, `search --reranker`, and the one-line errors for the wrong kind of model."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import prepared_rows
from sentence_transformers import CrossEncoder, SentenceTransformer, SentenceTransformerTrainingArguments
from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments
from test_train import _Interrupt, _InterruptAfterSave, _Stop, _StopBeforeTheFirstStep
from transformers import BertForSequenceClassification, TrainerCallback, TrainerState

from st_poetry.cli.options import parse_config, trainer_class
from st_poetry.core.config import EvaluateConfig, IndexConfig, QueryConfig, RerankConfig, TrainConfig
from st_poetry.core.errors import UserError
from st_poetry.core.modeling import CROSS_ENCODER, load_model, load_reranker, model_kind
from st_poetry.core.schema import PAIR
from st_poetry.evaluation.evaluate import evaluate
from st_poetry.evaluation.metrics import CCPMRecord, ccpm_accuracy
from st_poetry.retrieval.rerank import rerank
from st_poetry.retrieval.search import build_index, query
from st_poetry.training.reranker import train
from st_poetry.training.train import CHECKPOINTS, SUMMARY, TRAIN_LOG
from st_poetry.training.train import train as train_bi_encoder

NDCG = "eval_poetry-rerank_ndcg@10"


@pytest.fixture
def hard_negatives_dir(prepared_dir) -> Path:
    """The prepared folder, its rows given three negatives each (as CCPM rows are): other poems' lines."""
    lines = [row["text"] for row in prepared_rows()[2]]
    for name in ("train", "eval"):
        path = prepared_dir / f"{name}.jsonl"
        rows = PAIR.read(path)
        for index, row in enumerate(rows):
            row["negatives"] = [line for line in lines if line != row["positive"]][index % 10 :][:3]
        PAIR.write(path, rows)
    return prepared_dir


# A few steps at a learning rate that moves the tiny model, 2 of the rows' 3 negatives, every checkpoint kept.
RUN = {
    "max_steps": 4,
    "eval_steps": 2,
    "batch_size": 4,
    "num_negatives": 2,
    "in_batch_negatives": 2,
    "lr": 1e-3,
    "logging_steps": 1,
    "save_total_limit": None,
}


def _config(data, model, out, **overrides) -> RerankConfig:
    return RerankConfig(
        data=str(data), model=str(model), out=str(out), **{**RUN, "save_total_limit": None, **overrides}
    )


# ---------------------------------------------------------------------------------------------------------
# Model kinds


def test_each_kind_of_model_is_recognised(tiny_hf_model, tiny_st_model, tiny_reranker, tmp_path):
    assert model_kind(tiny_st_model) == "SentenceTransformer"
    assert model_kind(tiny_reranker) == CROSS_ENCODER
    assert model_kind(tiny_hf_model) is None
    # A reranker as the Hub ships many (bge-reranker-base): a plain sequence-classification checkpoint.
    hf_reranker = tmp_path / "hf-reranker"
    BertForSequenceClassification.from_pretrained(tiny_hf_model, num_labels=1).save_pretrained(hf_reranker)
    assert model_kind(str(hf_reranker)) == CROSS_ENCODER


@pytest.mark.parametrize(
    ("fixture", "message"),
    [
        ("tiny_st_model", "is an embedding model (bi-encoder), not a reranker: pass it as --model"),
        ("tiny_hf_model", "is a plain checkpoint with no trained ranking head, not a reranker"),
    ],
)
def test_a_model_that_is_not_a_reranker_is_refused_naming_its_kind(fixture, message, request):
    with pytest.raises(UserError, match=re.escape(message)):
        load_reranker(request.getfixturevalue(fixture))


def test_a_reranker_is_refused_where_an_embedding_model_belongs(tiny_reranker):
    with pytest.raises(
        UserError, match="is a reranker \\(cross-encoder\\), not an embedding model: use it as --reranker"
    ):
        load_model(tiny_reranker)


def test_unreachable_hub_reranker_says_what_to_pass(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"Hub is out of reach.*--reranker PATH"):
        load_reranker("some-org/not-cached-reranker")
    with pytest.raises(UserError, match="--model PATH"):
        load_reranker("some-org/not-cached-reranker", base=True)


def test_any_encoder_can_be_a_base_with_a_new_one_score_head(tiny_st_model, tiny_hf_model):
    for base in (tiny_st_model, tiny_hf_model):
        model = load_reranker(base, base=True, max_seq_length=32)
        assert isinstance(model, CrossEncoder) and model.num_labels == 1 and model.max_seq_length == 32


# ---------------------------------------------------------------------------------------------------------
# Reranking and CCPM


def test_rerank_reorders_the_first_k_by_the_rerankers_score_and_keeps_the_rest(tiny_reranker):
    model = load_reranker(tiny_reranker)
    lines = ["床前明月光", "疑是地上霜", "举头望明月", "低头思故乡", "春眠不觉晓", "处处闻啼鸟"]
    hits = [{"text": line, "score": 1.0 - index / 10, "id": index} for index, line in enumerate(lines)]
    query_text = "明亮的月光洒在床前"
    (reranked,) = rerank(model, [query_text], [hits], 4)

    expected = model.predict([(query_text, line) for line in lines[:4]])
    order = sorted(range(4), key=lambda index: -expected[index])
    assert [hit["id"] for hit in reranked] == [*order, 4, 5]
    assert [hit["rerank_score"] for hit in reranked[:4]] == pytest.approx([expected[i] for i in order], abs=1e-6)
    assert all("rerank_score" not in hit for hit in reranked[4:])
    assert [hit["score"] for hit in reranked[:4]] == [hits[i]["score"] for i in order]  # the retriever's score kept


def test_ccpm_accuracy_is_the_share_of_records_whose_answer_scores_highest(tiny_reranker):
    model = load_reranker(tiny_reranker)
    records = [
        CCPMRecord("明亮的月光洒在床前", ["床前明月光", "疑是地上霜", "春眠不觉晓", "处处闻啼鸟"], 0),
        CCPMRecord("夕阳依傍着西山慢慢地沉没", ["白日依山尽", "黄河入海流", "欲穷千里目"], 0),
    ]
    best = [int(np.argmax(model.predict([(r.translation, c) for c in r.choices]))) for r in records]
    right = [r._replace(answer=b) for r, b in zip(records, best, strict=True)]
    wrong = [r._replace(answer=(b + 1) % len(r.choices)) for r, b in zip(records, best, strict=True)]
    assert ccpm_accuracy(model, right) == 1.0
    assert ccpm_accuracy(model, wrong) == 0.0
    assert ccpm_accuracy(model, [right[0], wrong[1]]) == 0.5


# ---------------------------------------------------------------------------------------------------------
# Training


def test_training_gives_a_reranker_with_its_log_curves_card_and_best_checkpoint(
    tiny_hf_model, hard_negatives_dir, tmp_path, capsys
):
    out = tmp_path / "reranker"
    summary = train(_config(hard_negatives_dir, tiny_hf_model, out))

    for name in ("modules.json", "config.json", "model.safetensors", "README.md", TRAIN_LOG, SUMMARY):
        assert (out / name).is_file(), name
    assert (out / "training_curves.png").read_bytes().startswith(b"\x89PNG")
    assert model_kind(str(out)) == CROSS_ENCODER
    log = [json.loads(line) for line in (out / TRAIN_LOG).read_text(encoding="utf-8").splitlines()]
    assert log[0]["step"] == 0 and NDCG in log[0]  # the base model's evaluation
    evaluations = [entry for entry in log if NDCG in entry]
    assert [entry["step"] for entry in evaluations] == [0, 2, 4]
    assert any("loss" in entry for entry in log)

    assert summary.loss == "MultipleNegativesRankingLoss" and summary.global_step == 4
    assert summary.data.negatives_per_row == 2
    best = max(evaluations[1:], key=lambda entry: entry[NDCG])
    assert summary.best_step == best["step"]
    assert summary.after["NDCG@10"] == pytest.approx(best[NDCG], abs=1e-3)  # the saved model is the best one
    assert "reranker for classical Chinese poetry" in (out / "README.md").read_text(encoding="utf-8")
    assert "MRR@10" in capsys.readouterr().err

    reloaded = load_reranker(str(out))
    assert reloaded.predict([("明亮的月光", "床前明月光")]).shape == (1,)


def test_data_without_negatives_is_refused(tiny_hf_model, prepared_dir, tmp_path):
    with pytest.raises(UserError, match="hold no negatives"):
        train(_config(prepared_dir, tiny_hf_model, tmp_path / "out"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--num-negatives", "0"], "num_negatives must be >= 1"),
        (["--in-batch-negatives", "0"], "in_batch_negatives must be >= 1"),
        (["--max-steps", "5", "--eval-steps", "10"], "no evaluation would pick a best model"),
    ],
)
def test_bad_values_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_config(RerankConfig, argv)
    assert message in capsys.readouterr().err


def test_trainer_fields_reach_the_cross_encoders_trainer(tiny_hf_model, hard_negatives_dir, tmp_path):
    flags = ["--gradient_accumulation_steps", "2", "--report_to", "none", "--per-device-train-batch-size", "6"]
    parsed = parse_config(RerankConfig, flags)
    assert trainer_class(RerankConfig) is CrossEncoderTrainingArguments
    assert trainer_class(TrainConfig) is SentenceTransformerTrainingArguments  # the classes the recipes build
    config = _config(hard_negatives_dir, tiny_hf_model, tmp_path / "out", batch_size=parsed.batch_size)
    started = _StopBeforeTheFirstStep()
    with pytest.raises(_Stop):
        train(dataclasses.replace(config, trainer=parsed.trainer), callbacks=[started])
    args = started.args
    assert isinstance(args, CrossEncoderTrainingArguments)
    assert (args.gradient_accumulation_steps, args.report_to, args.per_device_train_batch_size) == (2, [], 6)


@pytest.mark.slow
def test_resume_ends_where_an_uninterrupted_run_would(tiny_hf_model, hard_negatives_dir, tmp_path):
    whole = train(_config(hard_negatives_dir, tiny_hf_model, tmp_path / "whole"))
    out = tmp_path / "resumed"
    with pytest.raises(_Interrupt):
        train(_config(hard_negatives_dir, tiny_hf_model, out), callbacks=[_InterruptAfterSave(2)])
    assert (out / CHECKPOINTS / "checkpoint-2").is_dir() and not (out / "modules.json").exists()
    resumed = train(_config(hard_negatives_dir, tiny_hf_model, out, resume=True))
    assert resumed.global_step == 4
    assert resumed.after == pytest.approx(whole.after, abs=1e-4)


def _save_training_state(checkpoint: Path, step: int) -> None:
    """What the trainer saves beside a checkpoint's model: its state, and an optimizer and scheduler over the
    checkpoint's own parameters (the optimizer state that fails to load into a model of the other kind)."""
    model = (
        CrossEncoder(str(checkpoint))
        if model_kind(str(checkpoint)) == CROSS_ENCODER
        else SentenceTransformer(str(checkpoint))
    )
    optimizer = torch.optim.AdamW(model.parameters())
    torch.save(optimizer.state_dict(), checkpoint / "optimizer.pt")
    torch.save(torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0).state_dict(), checkpoint / "scheduler.pt")
    state = TrainerState(global_step=step, max_steps=RUN["max_steps"], train_batch_size=RUN["batch_size"])
    state.save_to_json(str(checkpoint / "trainer_state.json"))


class _NoTraining(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        raise AssertionError("training started")


@pytest.mark.parametrize("folder_of", ["just train", "just train-reranker"])
def test_resume_refuses_a_checkpoint_of_the_other_kind_before_training(
    folder_of, tiny_st_model, tiny_hf_model, tiny_reranker, hard_negatives_dir, tmp_path
):
    """`just train-reranker --resume` on a `just train` folder, or the reverse, is one line saying which run the
    folder holds, not the optimizer's ValueError once training starts."""
    out = tmp_path / "out"
    checkpoint = out / CHECKPOINTS / "checkpoint-2"
    if folder_of == "just train":  # a bi-encoder's checkpoint, resumed by the reranker's training
        SentenceTransformer(tiny_st_model).save(str(checkpoint))
        stage, config = train, _config(hard_negatives_dir, tiny_hf_model, out, resume=True)
    else:
        shutil.copytree(tiny_reranker, checkpoint)
        run = {key: value for key, value in RUN.items() if key != "in_batch_negatives"}
        stage = train_bi_encoder
        config = TrainConfig(data=str(hard_negatives_dir), model=tiny_st_model, out=str(out), resume=True, **run)
    _save_training_state(checkpoint, step=2)
    message = rf"^--resume: {out} holds a `{folder_of}` run: .*; continue it with `{folder_of} --resume`"
    with pytest.raises(UserError, match=message):
        stage(config, [_NoTraining()])
    assert sorted(path.name for path in out.iterdir()) == [CHECKPOINTS]  # nothing trained, nothing written


# ---------------------------------------------------------------------------------------------------------
# evaluate --reranker, search --reranker


def test_evaluate_adds_a_reranked_row_per_k(tmp_path, prepared_dir, tiny_st_model, tiny_hf_model, tiny_reranker):
    out = tmp_path / "evaluation"
    config = EvaluateConfig(
        data=str(prepared_dir),
        model=[tiny_st_model, tiny_hf_model],
        out=str(out),
        bm25=False,
        reranker=tiny_reranker,
        rerank_top_k=[1, 5, 500],
    )
    report = evaluate(config)
    names = [row["name"] for row in report["rows"]]
    assert names == [
        "tiny-st",
        "tiny-st + rerank@1",
        "tiny-st + rerank@5",
        "tiny-st + rerank@38",
        "tiny-bert",
        "tiny-bert + rerank@1",
        "tiny-bert + rerank@5",
        "tiny-bert + rerank@38",
    ]
    rows = {row["name"]: row for row in report["rows"]}
    # Reordering only the top line changes nothing; reordering the whole corpus leaves no trace of the retriever.
    assert rows["tiny-st + rerank@1"]["retrieval"] == rows["tiny-st"]["retrieval"]
    assert rows["tiny-st + rerank@38"]["retrieval"] == pytest.approx(rows["tiny-bert + rerank@38"]["retrieval"])
    assert report["reranker"]["notes"] == ["--rerank-top-k 500 is more than the 38 corpus lines: reranked them all"]
    assert [scoring["pairs"] for scoring in report["reranker"]["scoring"]] == [8 * 38, 8 * 38]
    # both retrievers' top 38 are the whole corpus: the second pass scores nothing the first did not
    assert [scoring["scored"] for scoring in report["reranker"]["scoring"]] == [8 * 38, 0]
    markdown = (out / "evaluation.md").read_text(encoding="utf-8")
    assert "| tiny-st + rerank@5 |" in markdown and "pairs/s" in markdown
    assert "304 of its 304 scored by an earlier pass" in markdown


def test_evaluate_refuses_a_bi_encoder_as_reranker_and_writes_nothing(tmp_path, prepared_dir, tiny_st_model):
    out = tmp_path / "evaluation"
    config = EvaluateConfig(data=str(prepared_dir), model=[tiny_st_model], out=str(out), reranker=tiny_st_model)
    with pytest.raises(UserError, match=re.escape("embedding model (bi-encoder)")):
        evaluate(config)
    assert not out.exists()


@pytest.mark.parametrize("cls", [EvaluateConfig, QueryConfig])
def test_rerank_top_k_below_one_is_refused(cls, capsys):
    with pytest.raises(SystemExit):
        parse_config(cls, ["--rerank-top-k", "0"])
    assert "rerank_top_k must be >= 1" in capsys.readouterr().err


def test_search_gives_both_scores_and_the_latency(
    capsys, tmp_path, tiny_hf_model, tiny_st_model, tiny_reranker, prepared_dir
):
    index = tmp_path / "index"
    build_index(IndexConfig(model=tiny_hf_model, corpus=str(prepared_dir / "corpus.jsonl"), out=str(index)))
    capsys.readouterr()
    config = QueryConfig(
        queries=["明亮的月光洒在床前"], index=str(index), reranker=tiny_reranker, rerank_top_k=6, top_k=4, json=True
    )
    (result,) = query(config)
    printed = capsys.readouterr()
    hits = result["results"]
    assert json.loads(printed.out)["results"] == hits
    assert [hit["rank"] for hit in hits] == [1, 2, 3, 4]
    scores = [hit["rerank_score"] for hit in hits]
    assert scores == sorted(scores, reverse=True) and all("score" in hit for hit in hits)
    assert all(1 <= hit["retrieval_rank"] <= 6 for hit in hits)
    assert "per query: retrieval" in printed.err and "rerank" in printed.err

    (whole,) = query(QueryConfig(queries=["明月"], index=str(index), reranker=tiny_reranker, rerank_top_k=100))
    assert len(whole["results"]) == 10
    assert "more than the index's 38 lines" in capsys.readouterr().err

    with pytest.raises(UserError, match="embedding model"):
        query(QueryConfig(queries=["明月"], index=str(index), reranker=tiny_st_model))
