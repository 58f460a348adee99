from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys

import pytest

from st_poetry.cli import run_cli
from st_poetry.cli.options import Parser, load_config_file, parse_config
from st_poetry.core.config import (
    DEFAULT_MODEL,
    EvaluateConfig,
    IndexConfig,
    MineConfig,
    PipelineConfig,
    PrepareConfig,
    QueryConfig,
    RerankConfig,
    TrainConfig,
    UserError,
)


def test_defaults_file_and_flags_in_order_of_precedence(tmp_path):
    config_file = tmp_path / "train.json"
    config_file.write_text(json.dumps({"batch-size": 32, "lr": 1e-4}))
    config = parse_config(TrainConfig, ["--config", str(config_file), "--lr", "3e-5", "--resume"])
    assert config.batch_size == 32  # from the file
    assert config.lr == 3e-5  # the flag overrides the file
    assert config.resume is True
    assert config.model == DEFAULT_MODEL and config.scale == 50.0  # untouched defaults


def test_toml_config(tmp_path):
    config_file = tmp_path / "mine.toml"
    config_file.write_text("range_min = 5\nrange_max = 40\nrelative_margin = 0.1\n")
    config = parse_config(MineConfig, ["--config", str(config_file)])
    assert (config.range_min, config.range_max, config.relative_margin) == (5, 40, 0.1)


def test_list_and_optional_flags():
    config = parse_config(PrepareConfig, ["--works", "a.json", "b", "--kinds", "词"])
    assert config.works == ["a.json", "b"] and config.kinds == ["词"]
    assert parse_config(TrainConfig, ["--eval-max-corpus", "none"]).eval_max_corpus is None
    assert parse_config(QueryConfig, ["山中", "下雨", "--top-k", "3"]).queries == ["山中", "下雨"]


def test_prepare_without_inputs_is_an_error(capsys):
    with pytest.raises(SystemExit):
        parse_config(PrepareConfig, [])
    assert "no input given" in capsys.readouterr().err


def test_unknown_config_key_names_the_file(tmp_path):
    config_file = tmp_path / "bad.json"
    config_file.write_text(json.dumps({"learning_rat": 1}))
    with pytest.raises(UserError, match=r"bad\.json: unknown field\(s\) learning_rat \(did you mean learning_rate\?\)"):
        load_config_file(config_file, TrainConfig)


def test_malformed_config_file(tmp_path):
    config_file = tmp_path / "bad.json"
    config_file.write_text("{not json")
    with pytest.raises(UserError, match="not a valid JSON config"):
        load_config_file(config_file, TrainConfig)
    config_file.write_bytes('{"model": "模型"}'.encode("gbk"))
    with pytest.raises(UserError, match=r"bad\.json: not a valid JSON config: 'utf-8' codec can't decode"):
        load_config_file(config_file, TrainConfig)
    config_file.write_text('\ufeff{"lr": 0.001}', encoding="utf-8")  # a byte-order mark, as some editors write
    assert load_config_file(config_file, TrainConfig) == {"lr": 0.001}


def test_help_documents_every_field_with_its_default():
    text = " ".join(Parser(TrainConfig).format_help().split())
    for flag in [
        "--data",
        "--model",
        "--out",
        "--epochs",
        "--max-steps",
        "--batch-size",
        "--mini-batch-size",
        "--lr",
        "--num-negatives",
        "--eval-steps",
        "--resume",
        "--config",
    ]:
        assert flag in text
    assert "default: 2e-05" in text
    assert DEFAULT_MODEL in text.replace(" ", "")  # argparse may wrap the id at a hyphen


def test_run_cli_turns_user_errors_into_one_line(capsys):
    def stage(config):
        raise UserError("something the user can fix")

    with pytest.raises(SystemExit) as exit_info:
        run_cli(QueryConfig, stage, ["q"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: something the user can fix"


def test_ctrl_c_is_one_line_and_exit_code_130():
    # A real SIGINT to a running stage, as a terminal's Ctrl-C sends it.
    code = (
        "import time\n"
        "from st_poetry.cli import run_cli\n"
        "from st_poetry.core.config import QueryConfig\n"
        "def stage(config):\n"
        "    print('running', flush=True)\n"
        "    time.sleep(60)\n"
        "run_cli(QueryConfig, stage, ['q'])\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "running\n"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert (process.returncode, err) == (130, "interrupted\n")


def test_a_full_disk_or_a_denied_write_is_one_line(capsys):
    def stage(config):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "data/cache/x.npy")

    with pytest.raises(SystemExit) as exit_info:
        run_cli(QueryConfig, stage, ["q"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip() == "error: No space left on device: data/cache/x.npy"

    def bug(config):
        raise FileNotFoundError(errno.ENOENT, "a path the code got wrong")

    with pytest.raises(FileNotFoundError):  # not the machine's fault: the traceback is what a developer needs
        run_cli(QueryConfig, bug, ["q"])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"batch_size": "64"}, "batch_size must be an integer, got '64'"),
        ({"lr": "2e-5"}, "lr must be a number, got '2e-5'"),
        ({"resume": 1}, "resume must be true or false, got 1"),
        ({"eval_max_corpus": 1.5}, "eval_max_corpus must be an integer or none, got 1.5"),
    ],
)
def test_config_file_type_errors_name_the_field_and_the_file(tmp_path, capsys, values, message):
    config_file = tmp_path / "train.json"
    config_file.write_text(json.dumps(values))
    with pytest.raises(SystemExit) as exit_info:
        parse_config(TrainConfig, ["--config", str(config_file)])
    assert exit_info.value.code == 2
    assert f"{config_file}: {message}" in capsys.readouterr().err


def test_config_types_are_checked_for_python_callers_too():
    with pytest.raises(TypeError, match=r"works must be a list of strings, got 'poems\.json'"):
        PrepareConfig(works="poems.json")
    with pytest.raises(TypeError, match="sampling_strategy must be one of 'top', 'random'"):
        MineConfig(sampling_strategy="hardest")
    assert TrainConfig(epochs=3).epochs == 3  # an integer is a number
    with pytest.raises(TypeError, match="force must be true or false, got 'yes'"):
        PipelineConfig(force="yes", stages=["prepare"], prepare={"works": ["w.json"]})


def test_an_output_folder_must_be_able_to_be_one(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("x")
    monkeypatch.chdir(tmp_path / "..")
    with pytest.raises(ValueError, match=r"--out .*notes\.txt is a file"):
        MineConfig(out=str(tmp_path / "notes.txt"))
    with pytest.raises(ValueError, match=r"notes\.txt is a file, not a folder"):
        MineConfig(out=str(tmp_path / "notes.txt" / "mined"))
    monkeypatch.chdir(tmp_path)
    for out in (".", "..", str(tmp_path), "/"):
        with pytest.raises(ValueError, match="is the current folder or one above it"):
            PrepareConfig(works=["w.json"], out=out)
    assert PrepareConfig(works=["w.json"], out="processed").out == "processed"


@pytest.mark.parametrize(
    ("cls", "fields", "message"),
    [
        (PrepareConfig, {"ccpm": ["c.jsonl", "out/raw.jsonl"]}, "--ccpm out/raw.jsonl is inside --out out"),
        (PrepareConfig, {"poems": ["out"]}, "--poems out is --out out"),
        (MineConfig, {"data": "out/../out"}, "--data out/../out is --out out"),
        (
            TrainConfig,
            {"model": "out/checkpoints/checkpoint-2"},
            "--model out/checkpoints/checkpoint-2 is inside --out out",
        ),
        (RerankConfig, {"data": "out/train.jsonl"}, "--data out/train.jsonl is inside --out out"),
        (EvaluateConfig, {"model": ["m", "out/model"]}, "--model out/model is inside --out out"),
        (EvaluateConfig, {"reranker": "out"}, "--reranker out is --out out"),
        (IndexConfig, {"corpus": "out/corpus.jsonl"}, "--corpus out/corpus.jsonl is inside --out out"),
    ],
)
def test_an_input_inside_the_output_folder_is_refused(tmp_path, monkeypatch, cls, fields, message):
    """Each run replaces its output folder, which would take an input inside it along."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=re.escape(message) + ", which each run replaces"):
        cls(**fields, out="out")
    with pytest.raises(ValueError, match=f"--out {re.escape(str(tmp_path))}/out, which each run replaces"):
        cls(**fields, out=str(tmp_path / "out"))  # the same folder, spelt another way
    cls(**fields, out="ou")  # a name that merely starts like the folder's is outside it


def test_a_literal_field_takes_its_choices_from_its_annotation(capsys):
    assert parse_config(MineConfig, ["--sampling-strategy", "random"]).sampling_strategy == "random"
    with pytest.raises(SystemExit):
        parse_config(MineConfig, ["--sampling-strategy", "hardest"])
    assert "invalid choice: 'hardest'" in capsys.readouterr().err
    assert "{top,random}" in Parser(MineConfig).format_help()
