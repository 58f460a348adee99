"""`just train` on the tiny models: what lands in --out, the data readers, best model, early stopping, resume, DDP."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import prepared_rows
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
from transformers import TrainerCallback

from st_poetry.cli import main as cli_main
from st_poetry.cli.options import parse_config, stage_configs
from st_poetry.core.config import BGE_QUERY_INSTRUCTION, PipelineConfig, TrainConfig
from st_poetry.core.errors import UserError
from st_poetry.core.files import write_jsonl
from st_poetry.core.schema import CORPUS, MINED, PAIR, mined_row
from st_poetry.data.prepare import is_eval_group
from st_poetry.training.train import (
    CHECKPOINTS,
    CURVES,
    SUMMARY,
    TRAIN_LOG,
    Pair,
    _training_speed,
    column_prompts,
    load_training_data,
    publish_model,
    train,
    with_negative_columns,
)

NDCG = "eval_poetry-eval_cosine_ndcg@10"


@pytest.fixture
def mined_dir(tmp_path) -> Path:
    """A folder shaped like `just mine` output: negative_1..3, null where a row ran short."""
    train, evaluation, corpus = prepared_rows()
    lines = [row["text"] for row in corpus]
    folder = tmp_path / "mined"
    folder.mkdir()
    for name, rows in (("train", train), ("eval", evaluation)):
        mined = []
        for index, row in enumerate(rows):
            candidates = [line for line in lines if line != row["positive"]][index % 5 :][:3]
            negatives = candidates[: 3 - index % 3]  # 3, 2 or 1 negatives
            mined.append(mined_row(row["anchor"], row["positive"], negatives + [None] * (3 - len(negatives))))
        MINED.write(folder / f"{name}.jsonl", mined)
    CORPUS.write(folder / "corpus.jsonl", corpus)
    return folder


def _config(data, model, out, **overrides) -> TrainConfig:
    values = dict(
        data=str(data),
        model=str(model),
        out=str(out),
        max_steps=2,
        eval_steps=2,
        batch_size=4,
        mini_batch_size=2,
        num_negatives=2,
        logging_steps=1,
        save_total_limit=None,
    )
    return TrainConfig(**{**values, **overrides})


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / TRAIN_LOG).read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------------
# Config and data (no model)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch-size", "1"], "batch_size must be >= 2"),
        (["--lr", "0"], "lr must be > 0"),
        (["--epochs", "0"], "epochs > 0 or max_steps > 0"),
        (["--mini-batch-size", "0"], "mini_batch_size must be >= 1"),
        (["--num-negatives", "-1"], "num_negatives must be >= 0"),
        (["--max-steps", "50", "--eval-steps", "100"], "no evaluation would pick a best model"),
        (["--patience", "0"], "patience must be >= 1"),
        (["--eval-fraction", "1"], "eval_fraction must be in (0, 1)"),
        (["--save-total-limit", "0"], "save_total_limit must be >= 1"),
    ],
)
def test_bad_values_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(TrainConfig, argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_flags_the_issue_names():
    config = parse_config(
        TrainConfig,
        "--data d --model m --out o --epochs 2 --max-steps 300 --batch-size 32 --mini-batch-size 8 --lr 5e-5 "  # noqa: SIM905
        "--num-negatives 0 --eval-steps 100 --resume".split(),
    )
    assert (config.max_steps, config.batch_size, config.mini_batch_size, config.num_negatives) == (300, 32, 8, 0)
    assert config.lr == 5e-5 and config.resume and config.epochs == 2


def test_short_rows_are_topped_up_with_other_rows_positives():
    rows = [Pair("a1", "p1", ["n1", "n2", "n3"]), Pair("a2", "p2", ["n4"]), Pair("a3", "p3", [])]
    out, filled = with_negative_columns(rows, 2, [row.positive for row in rows], seed=0)
    assert filled == 1 + 2
    assert [list(row) for row in out] == [["anchor", "positive", "negative_1", "negative_2"]] * 3
    assert (out[0]["negative_1"], out[0]["negative_2"]) == ("n1", "n2")  # the first n, in order
    assert out[1]["negative_1"] == "n4" and out[1]["negative_2"] in {"p1", "p3"}
    assert {out[2]["negative_1"], out[2]["negative_2"]} == {"p1", "p2"}  # never its own positive
    assert out == with_negative_columns(rows, 2, ["p1", "p2", "p3"], seed=0)[0]  # seeded
    assert with_negative_columns(rows, 0, [], seed=0)[0][0] == {"anchor": "a1", "positive": "p1"}
    with pytest.raises(UserError, match="too few"):
        with_negative_columns(rows, 3, ["p1", "p2", "p3"], seed=0)


def test_mined_folder(mined_dir, tmp_path):
    data = load_training_data(_config(mined_dir, "unused", tmp_path / "out", num_negatives=9))
    assert data.stats.kind == "mined" and data.stats.negatives_per_row == 3  # capped at the longest row
    assert data.train.column_names == ["anchor", "positive", "negative_1", "negative_2", "negative_3"]
    assert list(data.train[0]) == data.train.column_names
    assert all(value for row in [*data.train, *data.eval] for value in row.values())  # no nulls left
    # rows with 2 and 1 negatives are topped up: 24 train rows in thirds -> 8 * 1 + 8 * 2
    assert data.stats.negatives_topped_up["train"] == 24
    assert len(data.eval) == 8 and len(data.corpus) == 38


def test_prepared_folder_without_negatives_is_in_batch_only(prepared_dir, tmp_path):
    data = load_training_data(_config(prepared_dir, "unused", tmp_path / "out", num_negatives=9, eval_max_rows=5))
    assert data.stats.kind == "prepared" and data.stats.negatives_per_row == 0
    assert list(data.train[0]) == data.train.column_names == ["anchor", "positive"]
    assert (len(data.eval), data.stats.eval_rows_in_split) == (5, 8)


def test_flagembedding_file_is_split_by_query(tmp_path):
    train, _, _ = prepared_rows()
    lines = [{"query": row["anchor"], "pos": [row["positive"]], "neg": ["大漠孤烟直", "长河落日圆"]} for row in train]
    lines.append({"query": "", "pos": ["x"]})  # skipped and counted
    path = tmp_path / "fe.jsonl"
    write_jsonl(path, lines)
    data = load_training_data(_config(path, "unused", tmp_path / "out", eval_fraction=0.25))
    assert data.stats.kind == "flagembedding" and data.stats.skipped == {"empty query": 1}
    assert data.stats.negatives_per_row == 2 and data.train[0]["negative_1"] == "大漠孤烟直"
    assert not {row["anchor"] for row in data.train} & {row["anchor"] for row in data.eval}
    assert len(data.train) + len(data.eval) == len(train)
    assert {row["positive"] for row in data.eval} <= {row["text"] for row in data.corpus}


def test_flagembedding_file_follows_prepares_rules(tmp_path):
    queries = [f"描写第{n}处山水的景色" for n in range(40)]
    positives = ["明月松间照" if n % 2 else chr(0x4E00 + n) * 5 for n in range(40)]  # odd queries share a line
    lines = [{"query": q, "pos": [p], "neg": ["大漠孤烟直"]} for q, p in zip(queries, positives, strict=True)]
    lines.append(lines[0])  # a repeated record: its pair is kept once
    path = tmp_path / "fe.jsonl"
    write_jsonl(path, lines)
    data = load_training_data(_config(path, "unused", tmp_path / "out", eval_fraction=0.25))
    held_out = [n for n, query in enumerate(queries) if is_eval_group(query, 42, 0.25)]
    shared_held_out = [n for n in held_out if n % 2]
    assert shared_held_out and len(shared_held_out) < 20  # the shared line is in train and in eval
    # an eval pair whose line is also trained on is dropped
    assert data.stats.skipped == {
        "duplicate pair": 1,
        "eval pair whose positive is a train positive": len(shared_held_out),
    }
    assert len(data.eval) == len(held_out) - len(shared_held_out)
    assert len(data.train) == len(queries) - len(held_out)

    path.write_text(path.read_text(encoding="utf-8") + "[1, 2]\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"fe.jsonl line 42: not a JSON object"):
        load_training_data(_config(path, "unused", tmp_path / "out", eval_fraction=0.25))


def test_unknown_data_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match=r"train\.jsonl is missing: --data must be a folder from `just mine`"):
        load_training_data(_config(tmp_path, "unused", tmp_path / "out"))
    bad = tmp_path / "bad"
    bad.mkdir()
    write_jsonl(bad / "train.jsonl", [{"anchor": "a", "positive": ""}])  # no writer of the schema writes this
    write_jsonl(bad / "eval.jsonl", [])
    CORPUS.write(bad / "corpus.jsonl", [{"text": "明月"}])
    with pytest.raises(UserError, match=r"train.jsonl:1: 'positive' is not a non-empty text: expected an object"):
        load_training_data(_config(bad, "unused", tmp_path / "out"))
    (bad / "train.jsonl").write_bytes('{"anchor": "明月"}\n'.encode("gbk"))
    with pytest.raises(UserError, match=r"train.jsonl: not UTF-8 text"):
        load_training_data(_config(bad, "unused", tmp_path / "out"))


def test_prompts_follow_the_model(tiny_st_model, tiny_hf_model):
    columns = ["anchor", "positive", "negative_1"]
    prompts = column_prompts(SentenceTransformer(tiny_st_model), columns)
    assert prompts == {"anchor": "query: ", "positive": "passage: ", "negative_1": "passage: "}
    assert column_prompts(SentenceTransformer(tiny_hf_model), columns) is None


def test_the_final_model_joins_out_whole_or_not_at_all(tiny_st_model, tmp_path, monkeypatch):
    """publish_model goes through files.atomic_output_dir (merge=True), the way every stage writes its output."""
    out = tmp_path / "out"
    (out / CHECKPOINTS / "checkpoint-2").mkdir(parents=True)
    (out / TRAIN_LOG).write_text("{}\n")
    model = SentenceTransformer(tiny_st_model)
    publish_model(model, out)
    assert SentenceTransformer(str(out)).prompts["query"] == "query: "
    assert (out / CHECKPOINTS / "checkpoint-2").is_dir() and (out / TRAIN_LOG).is_file()  # left as they were

    # killed while moving the files in: the folder no longer claims to hold a model
    moved = []
    real_replace = Path.replace

    def dies_after_three(self, target):
        if len(moved) == 3:
            raise KeyboardInterrupt
        moved.append(self.name)
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        publish_model(model, out)
    assert "modules.json" not in moved and "config.json" not in moved  # they go last
    assert not (out / "modules.json").exists() and not (out / "config.json").exists()
    assert not list(tmp_path.glob(".out.partial-*"))
    monkeypatch.undo()
    publish_model(model, out)  # a rerun completes it
    assert SentenceTransformer(str(out)).prompts["query"] == "query: "


# ---------------------------------------------------------------------------------------------------------
# Every training argument: the trainer's fields beside ours, on the command line and in a [train] section


class _Stop(Exception):
    pass


class _StopBeforeTheFirstStep(TrainerCallback):
    """Keeps the arguments and the model the trainer starts with, and ends the run before its first step."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.args, self.model = args, model
        raise _Stop


def _trainer_start(config: TrainConfig) -> _StopBeforeTheFirstStep:
    stop = _StopBeforeTheFirstStep()
    with pytest.raises(_Stop):
        train(config, callbacks=[stop])
    return stop


@pytest.mark.parametrize("source", ["flags", "toml"])
def test_trainer_fields_reach_the_trainer(source, mined_dir, tiny_st_model, tmp_path):
    out = tmp_path / "out"
    ours = {"data": str(mined_dir), "model": tiny_st_model, "out": str(out), "max_steps": 2, "eval_steps": 2}
    ours |= {"batch_size": 4, "mini_batch_size": 2}
    theirs = {"gradient_accumulation_steps": 2, "gradient_checkpointing": True, "report_to": ["none"]}
    if source == "flags":
        flags = [f"--{name.replace('_', '-')}={value}" for name, value in ours.items()]
        flags += ["--gradient_accumulation_steps", "2", "--gradient_checkpointing", "--report_to", "none"]
        config = parse_config(TrainConfig, [*flags, "--learning_rate", "3e-5", "--weight-decay", "0.1"])
    else:
        preset = tmp_path / "preset.toml"
        section = {**ours, **theirs, "lr": 3e-5, "weight_decay": 0.1}
        preset.write_text("[train]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in section.items()))
        config = stage_configs(parse_config(PipelineConfig, ["--config", str(preset), "--stages", "train"]))["train"]
    started = _trainer_start(config)
    args = started.args
    assert (args.gradient_accumulation_steps, args.gradient_checkpointing, args.report_to) == (2, True, [])
    assert started.model[0].auto_model.is_activation_checkpointing  # the library's new name for it
    assert (args.learning_rate, args.weight_decay, args.per_device_train_batch_size) == (3e-5, 0.1, 4)
    # what the stage sets around them: its defaults, and the fields it derives
    assert args.per_device_eval_batch_size == 4 and args.batch_sampler == "no_duplicates"
    assert args.output_dir == str(out / CHECKPOINTS) and args.run_name == "out" and args.save_steps == 2
    assert args.load_best_model_at_end and args.metric_for_best_model == NDCG


def test_a_trainer_field_given_takes_over_the_stages_default(mined_dir, tiny_st_model, tmp_path):
    flags = ["--per_device_eval_batch_size", "3", "--batch_sampler", "batch_sampler", "--lr_scheduler_type", "constant"]
    config = parse_config(TrainConfig, flags)
    config = _config(mined_dir, tiny_st_model, tmp_path / "out", trainer=config.trainer)
    args = _trainer_start(config).args
    assert (args.per_device_eval_batch_size, args.batch_sampler, args.lr_scheduler_type) == (
        3,
        "batch_sampler",
        "constant",
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--gradient_acumulation_steps", "2"], "unrecognized arguments: --gradient_acumulation_steps 2"),
        (["--gradient_accumulation_steps", "two"], "invalid int value: 'two'"),
        (["--output_dir", "x"], "unrecognized arguments: --output_dir x"),  # the stage's: --out
        (["--lr_scheduler_type", "sometimes"], "invalid choice: 'sometimes'"),
    ],
)
def test_a_bad_trainer_flag_is_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(TrainConfig, argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("error:") == 1


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("gradient_acumulation_steps = 2", r"unknown field\(s\) gradient_acumulation_steps \(did you mean gradient_a"),
        ('gradient_accumulation_steps = "2"', "gradient_accumulation_steps must be an integer, got '2'"),
        ('output_dir = "x"', "output_dir is set by the stage: --out/checkpoints"),
    ],
)
def test_a_bad_trainer_field_in_a_file_is_one_line_naming_it(line, message, tmp_path, capsys):
    path = tmp_path / "train.toml"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        parse_config(TrainConfig, ["--config", str(path)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and str(path) in err
    assert re.search(message, err), err


def test_trainer_arguments_the_library_refuses_are_one_line(mined_dir, tiny_st_model, tmp_path):
    config = _config(mined_dir, tiny_st_model, tmp_path / "out", trainer={"dataloader_prefetch_factor": 2})
    with pytest.raises(UserError, match=r"^training arguments: --dataloader_prefetch_factor can only be set when"):
        train(config)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_help_lists_the_trainer_fields(capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--gradient_accumulation_steps", "--gradient_checkpointing", "--report_to", "--learning_rate"):
        assert flag in text
    assert "--output_dir" not in text  # the stage derives it from --out


# ---------------------------------------------------------------------------------------------------------
# Training runs


def test_a_few_steps_give_a_loadable_model(tiny_st_model, mined_dir, tmp_path):
    out = tmp_path / "out"
    summary = train(_config(mined_dir, tiny_st_model, out))

    model = SentenceTransformer(str(out))
    assert [type(module) for module in model][1:] == [Pooling, Normalize]
    assert model[1].pooling_mode == "mean"  # the ST model's own pooling is kept
    assert model.prompts["query"] == "query: " and model.prompts["document"] == "passage: "
    assert model.encode(["床前明月光"], prompt_name="document").shape == (1, 32)
    for name in ("1_Pooling/config.json", "2_Normalize", "README.md", TRAIN_LOG, CURVES, SUMMARY):
        assert (out / name).exists(), name
    assert (out / CHECKPOINTS / "checkpoint-2").is_dir()
    assert not list(tmp_path.glob(".out.partial-*"))
    card = (out / "README.md").read_text()
    assert "language:\n- zh" in card and "CachedMultipleNegativesRankingLoss" in card

    log = _log(out)
    assert [r["step"] for r in log if "loss" in r] == [1, 2]  # every logged step
    assert log[0]["step"] == 0 and NDCG in log[0]  # the base model's score
    assert any("eval_loss" in r for r in log)
    assert summary.global_step == 2 and summary.best_step == 2
    assert summary.loss == "CachedMultipleNegativesRankingLoss"
    assert summary.after["NDCG@10"] == pytest.approx(max(r[NDCG] for r in log[1:] if NDCG in r), abs=1e-3)
    assert json.loads((out / SUMMARY).read_text())["after"] == summary.after
    assert summary.eval_runtime_s > 0 and summary.train_samples_per_second > 0
    # train_summary.json keeps its keys, in their order, for the scripts and people who read it
    saved = json.loads((out / SUMMARY).read_text())
    assert list(saved) == [
        *("model", "out", "data", "global_step", "max_steps", "loss", "stopped_early", "best_step", "train_loss"),
        *("before", "after", "before_all", "after_all", "train_runtime_s", "eval_runtime_s"),
        *("train_samples_per_second", "wall_s", "config"),
    ]
    assert list(saved["data"]) == [
        *("data", "kind", "train_rows", "eval_rows", "eval_rows_in_split", "corpus", "negatives_per_row"),
        *("negatives_topped_up", "skipped"),
    ]
    assert saved["data"]["negatives_topped_up"] == summary.data.negatives_topped_up
    assert saved["global_step"] == summary.global_step and saved["config"]["data"] == str(mined_dir)


def test_model_and_checkpoint_files_follow_the_umask(tiny_st_model, mined_dir, tmp_path):
    """A server running as another user must be able to load the model: safetensors writes its weights 0600."""
    out = tmp_path / "out"
    previous = os.umask(0o022)
    try:
        train(_config(mined_dir, tiny_st_model, out))
    finally:
        os.umask(previous)
    checkpoint = out / CHECKPOINTS / "checkpoint-2"
    assert (out / "model.safetensors").is_file() and (checkpoint / "model.safetensors").is_file()
    modes = {str(path.relative_to(out)): oct(stat.S_IMODE(path.stat().st_mode)) for path in out.rglob("*")}
    assert {path: mode for path, mode in modes.items() if Path(out / path).is_file() and mode != "0o644"} == {}
    assert {path: mode for path, mode in modes.items() if Path(out / path).is_dir() and mode != "0o755"} == {}


@pytest.mark.slow
def test_plain_checkpoint_gets_cls_pooling_and_the_query_instruction(tiny_hf_model, prepared_dir, tmp_path):
    out = tmp_path / "out"
    train(_config(prepared_dir, tiny_hf_model, out, query_instruction=BGE_QUERY_INSTRUCTION))
    model = SentenceTransformer(str(out))
    assert model[1].pooling_mode == "cls" and isinstance(model[2], Normalize)
    assert model.prompts["query"] == BGE_QUERY_INSTRUCTION


def test_output_folder_rules(tiny_st_model, prepared_dir, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty: pass --resume"):
        train(_config(prepared_dir, tiny_st_model, tmp_path / "out"))
    with pytest.raises(UserError, match="no complete checkpoint"):
        train(_config(prepared_dir, tiny_st_model, tmp_path / "out", resume=True))


class _BreakTheBestModel(TrainerCallback):
    """Pretend a better evaluation was recorded than any the kept model can reproduce."""

    def on_train_end(self, args, state, control, **kwargs):
        state.best_metric = 2.0


def test_a_final_model_that_is_not_the_best_is_not_saved(tiny_st_model, prepared_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="the best model was not loaded"):
        train(_config(prepared_dir, tiny_st_model, out), callbacks=[_BreakTheBestModel()])
    assert not (out / "modules.json").exists()


@pytest.mark.slow
def test_early_stopping_stops(tiny_st_model, prepared_dir, tmp_path):
    # A learning rate too small to move any weight: NDCG@10 never improves after the first evaluation.
    summary = train(_config(prepared_dir, tiny_st_model, tmp_path / "out", max_steps=20, patience=1, lr=1e-12))
    assert summary.global_step == 4 and summary.stopped_early and summary.best_step == 2


class _Interrupt(Exception):
    pass


class _InterruptAfterSave(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise _Interrupt


@pytest.mark.slow
def test_resume_ends_where_an_uninterrupted_run_would(tiny_st_model, mined_dir, tmp_path):
    steps = dict(max_steps=6, eval_steps=2, lr=1e-3)
    whole = train(_config(mined_dir, tiny_st_model, tmp_path / "whole", **steps))

    interrupted = tmp_path / "interrupted"
    with pytest.raises(_Interrupt):
        train(_config(mined_dir, tiny_st_model, interrupted, **steps), callbacks=[_InterruptAfterSave(4)])
    assert not (interrupted / "modules.json").exists()  # no final model after a crash
    resumed = train(_config(mined_dir, tiny_st_model, interrupted, resume=True, **steps))

    assert resumed.global_step == whole.global_step == 6
    assert resumed.best_step == whole.best_step
    last = f"{CHECKPOINTS}/checkpoint-6/model.safetensors"
    a, b = load_file(tmp_path / "whole" / last), load_file(interrupted / last)
    assert all(torch.allclose(a[name], b[name], atol=1e-5) for name in a)
    losses = [[r.get("loss") for r in _log(out) if "loss" in r] for out in (tmp_path / "whole", interrupted)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_resume_skips_a_checkpoint_cut_off_while_saving_and_reports_the_whole_runs_loss(
    tiny_st_model, mined_dir, tmp_path, capsys
):
    # logging_steps 3 does not divide the checkpoint step 2: the loss is also logged at every evaluation and save
    steps = dict(max_steps=4, eval_steps=2, logging_steps=3, lr=1e-3)
    whole = train(_config(mined_dir, tiny_st_model, tmp_path / "whole", **steps))

    out = tmp_path / "interrupted"
    with pytest.raises(_Interrupt):
        train(_config(mined_dir, tiny_st_model, out, **steps), callbacks=[_InterruptAfterSave(2)])
    # a SIGKILL while checkpoint-4 was being written: everything but trainer_state.json, which is written last
    shutil.copytree(out / CHECKPOINTS / "checkpoint-2", out / CHECKPOINTS / "checkpoint-4")
    (out / CHECKPOINTS / "checkpoint-4" / "trainer_state.json").unlink()
    (out / CHECKPOINTS / "checkpoint-3").mkdir()  # an empty one, cut off at once
    capsys.readouterr()
    resumed = train(_config(mined_dir, tiny_st_model, out, resume=True, **steps))

    printed = capsys.readouterr().err
    assert "checkpoint-4 is incomplete" in printed and "checkpoint-3 is incomplete" in printed
    assert f"resuming from {out / CHECKPOINTS / 'checkpoint-2'}" in printed
    assert resumed.global_step == 4 and (out / CHECKPOINTS / "checkpoint-4" / "trainer_state.json").is_file()
    # the mean train loss of all 4 steps, not of the 2 after the resume (the logged ones differ: step 2 vs 3 and 4)
    assert resumed.train_loss == pytest.approx(whole.train_loss, rel=1e-4)
    assert _log(out)[-1]["train_loss"] == pytest.approx(whole.train_loss, rel=1e-4)
    session = [r["loss"] for r in _log(out) if "loss" in r and r["step"] > 2]
    assert resumed.train_loss != pytest.approx(sum(session) / len(session), rel=1e-3)
    last = f"{CHECKPOINTS}/checkpoint-4/model.safetensors"
    a, b = load_file(tmp_path / "whole" / last), load_file(out / last)
    assert all(torch.allclose(a[name], b[name], atol=1e-5) for name in a)

    shutil.rmtree(out / CHECKPOINTS)
    (out / CHECKPOINTS / "checkpoint-2").mkdir(parents=True)
    with pytest.raises(UserError, match="no complete checkpoint"):
        train(_config(mined_dir, tiny_st_model, out, resume=True, **steps))


def test_one_train_row_is_refused(prepared_dir, tmp_path):
    train_rows, _, _ = prepared_rows()
    PAIR.write(prepared_dir / "train.jsonl", train_rows[:1])
    with pytest.raises(UserError, match="only 1 train row"):
        load_training_data(_config(prepared_dir, "unused", tmp_path / "out"))


def test_batches_with_nothing_to_learn_from_are_refused(tiny_st_model, prepared_dir, tmp_path):
    # every row shares one line: the no-duplicates sampler puts one row in each batch, and rows have no negatives
    train_rows, _, _ = prepared_rows()
    PAIR.write(prepared_dir / "train.jsonl", [{**row, "positive": "床前明月光"} for row in train_rows])
    out = tmp_path / "out"
    with pytest.raises(UserError, match="the training loss was 0 at every step"):
        train(_config(prepared_dir, tiny_st_model, out))
    assert not (out / "modules.json").exists()


@pytest.mark.slow
def test_flagembedding_file_trains(tiny_st_model, tmp_path):
    train_rows, _, _ = prepared_rows()
    path = tmp_path / "fe.jsonl"
    write_jsonl(path, [{"query": r["anchor"], "pos": [r["positive"]], "neg": ["大漠孤烟直"]} for r in train_rows])
    summary = train(_config(path, tiny_st_model, tmp_path / "out", eval_fraction=0.25, cached_loss=False))
    assert summary.data.kind == "flagembedding" and (tmp_path / "out" / "modules.json").is_file()
    assert summary.loss == "MultipleNegativesRankingLoss"


# Run `just train` in a child that SIGKILLs itself while checkpoint-4 is being saved: after the weights and the
# optimizer, before trainer_state.json, which the trainer writes last.
_KILLED_WHILE_SAVING = """
import os, signal, sys
from transformers.trainer_callback import TrainerState
save = TrainerState.save_to_json
def save_or_die(self, path):
    if self.global_step == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    save(self, path)
TrainerState.save_to_json = save_or_die
from st_poetry.cli import main
main(["train", *sys.argv[1:]])
"""


@pytest.mark.slow
def test_a_run_killed_while_saving_a_checkpoint_resumes_from_the_one_before(tiny_st_model, mined_dir, tmp_path):
    out = tmp_path / "out"
    flags = ["--data", str(mined_dir), "--model", tiny_st_model, "--out", str(out), "--max-steps", "6"]
    flags += "--eval-steps 2 --batch-size 4 --mini-batch-size 2 --num-negatives 2".split()  # noqa: SIM905
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    killed = subprocess.run([sys.executable, "-c", _KILLED_WHILE_SAVING, *flags], capture_output=True, env=env)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (out / CHECKPOINTS / "checkpoint-4" / "model.safetensors").is_file()
    assert not (out / CHECKPOINTS / "checkpoint-4" / "trainer_state.json").exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "st_poetry", "train", *flags, "--resume"], capture_output=True, text=True, env=env
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "checkpoint-4 is incomplete" in resumed.stderr and "resuming from" in resumed.stderr
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["global_step"] == 6 and (out / "modules.json").is_file()


@pytest.mark.slow
def test_two_process_gloo_run(tiny_st_model, mined_dir, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "st_poetry", "train"]
    command += ["--data", str(mined_dir), "--model", tiny_st_model, "--out", str(out)]
    command += "--max-steps 2 --eval-steps 2 --batch-size 4 --mini-batch-size 2 --num-negatives 1".split()  # noqa: SIM905
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["global_step"] == 2
    assert SentenceTransformer(str(out)).prompts["query"] == "query: "


def test_training_speed_leaves_out_evaluations_and_the_part_before_a_resume():
    log = [
        {"loss": 2.0, "step": 1},
        {"eval_runtime": 1.5, "step": 2},
        {"eval_runtime": 0.5, "step": 4},
        {"train_runtime": 10.0, "step": 4},
    ]
    speed = _training_speed(log, None, samples_per_step=8)
    assert speed == {"train_runtime_s": 10.0, "eval_runtime_s": 2.0, "train_samples_per_second": 4 * 8 / 8.0}
    resumed = _training_speed(log, 2, samples_per_step=8)  # the run resumed at checkpoint-2: steps 3-4 only
    assert resumed["eval_runtime_s"] == 0.5 and resumed["train_samples_per_second"] == 2 * 8 / 9.5
    assert _training_speed(log[:3], None, samples_per_step=8)["train_samples_per_second"] is None


def test_a_quiet_run_shows_no_progress_bars_per_step_lines_or_summary(tiny_st_model, mined_dir, tmp_path, capsys):
    """-q: the trainer's progress bar goes, and so do the per-step log lines it would print in its place."""
    from st_poetry.cli import main
    from st_poetry.core import log

    flags = ["--max-steps", "2", "--eval-steps", "2", "--logging-steps", "1", "--batch-size", "4"]
    capsys.readouterr()
    try:
        main(["-q", "train", "--data", str(mined_dir), "--model", tiny_st_model, "--out", str(tmp_path / "q"), *flags])
    finally:
        log.set_verbosity(log.DEFAULT_LEVEL)
    out, err = capsys.readouterr()
    # all that is left: sentence-transformers' model-card bar, which has no switch and erases itself (leave=False)
    assert out == "" and [part for part in err.split("\r") if part.strip() and "widget examples" not in part] == []
    assert (tmp_path / "q" / SUMMARY).is_file()
    main(["train", "--data", str(mined_dir), "--model", tiny_st_model, "--out", str(tmp_path / "loud"), *flags])
    printed = capsys.readouterr()
    assert "'loss'" in printed.out + printed.err and "trained " in printed.err
