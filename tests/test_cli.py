"""`st-poetry COMMAND`: one entry point for every stage, light until a command runs, and the layers it sits on."""

from __future__ import annotations

import subprocess
import sys

import pytest

from st_poetry.cli import COMMANDS, main


def test_help_lists_every_stage(capsys):
    main(["--help"])
    usage = capsys.readouterr().out
    for command in ("download", "prepare", "mine", "train", "train-reranker", "evaluate", "export", "index"):
        assert f"\n  {command} " in usage
    assert set(COMMANDS) >= {"search", "serve", "pipeline"}


@pytest.mark.parametrize("argv", [[], ["nope"]])
def test_a_missing_or_unknown_command_is_exit_code_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and "choose one of download, prepare" in capsys.readouterr().err


def test_a_commands_help_comes_from_its_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["mine", "--help"])
    assert exit_info.value.code == 0 and "--num-negatives" in capsys.readouterr().out


def _loaded(code: str) -> list[str]:
    heavy = [
        *("torch", "sentence_transformers", "datasets"),
        *("st_poetry.training", "st_poetry.evaluation", "matplotlib", "opencc"),
    ]
    probe = f"import sys; {code}; print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()


def test_the_entry_point_and_the_data_layer_load_no_torch():
    assert _loaded("import st_poetry.cli, st_poetry.cli.pipeline, st_poetry.data.download") == []
    assert _loaded("import st_poetry.data.prepare") == ["opencc"]  # --poems converts to simplified script


def test_parsing_loads_no_torch_until_a_training_stage_needs_its_trainers_fields(tmp_path):
    """The parser is transformers' HfArgumentParser, which loads no torch; `train`'s loads the trainer's arguments."""
    (tmp_path / "pipeline.toml").write_text('[prepare]\nworks = ["w"]\n[index]\nmodel = "m"\n', encoding="utf-8")
    light = "from st_poetry.core.config import DownloadConfig, PipelineConfig, PrepareConfig, QueryConfig; "
    light += "parse_config(PrepareConfig, ['--works', 'w']); parse_config(DownloadConfig, []); "
    light += f"parse_config(QueryConfig, ['q']); parse_config(PipelineConfig, ['--config', '{tmp_path}/pipeline.toml', "
    light += "'--stages', 'prepare', 'index'])"
    assert _loaded(f"from st_poetry.cli.options import parse_config; {light}") == []
    train = "from st_poetry.cli.options import parse_config; from st_poetry.core.config import TrainConfig; "
    assert "torch" in _loaded(train + "parse_config(TrainConfig, [])")


def test_the_query_path_loads_no_torch_datasets_training_evaluation_plots_or_opencc():
    """torch and sentence-transformers come only with a model that needs them (tests/test_backends.py searches an
    exported model's index without them); the lines table is read by pyarrow, not `datasets`."""
    assert _loaded("import st_poetry.retrieval.search, st_poetry.serve.app") == []
