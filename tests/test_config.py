from __future__ import annotations

import json

import pytest

from st_poetry.config import (
    DEFAULT_MODEL,
    MineConfig,
    PrepareConfig,
    QueryConfig,
    TrainConfig,
    UserError,
    build_parser,
    load_config_file,
    parse_config,
    run_cli,
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
    config_file.write_text(json.dumps({"learning_rate": 1}))
    with pytest.raises(UserError, match=r"bad\.json: unknown field\(s\) learning_rate"):
        load_config_file(config_file, TrainConfig)


def test_malformed_config_file(tmp_path):
    config_file = tmp_path / "bad.json"
    config_file.write_text("{not json")
    with pytest.raises(UserError, match="not a valid JSON config"):
        load_config_file(config_file, TrainConfig)


def test_help_documents_every_field_with_its_default():
    text = " ".join(build_parser(TrainConfig).format_help().split())
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
