"""`just pipeline`: one TOML file runs every stage on the tiny model, fresh stages are skipped, --force reruns."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from conftest import POEMS

from st_poetry.cli.options import parse_config, stage_configs
from st_poetry.cli.pipeline import is_fresh, newest_input, run_pipeline, run_stage
from st_poetry.core.config import PipelineConfig

ROOT = Path(__file__).parents[1]
MARKERS = {
    "prepare": "processed/stats.json",
    "mine": "mined/mine_stats.json",
    "train": "model/modules.json",
    "evaluate": "evaluation/evaluation.json",
    "index": "index/index.json",
}


def _write_works(tmp_path: Path) -> Path:
    works = [
        {"Kind": "诗", "Title": title, "Author": author, "Dynasty": dynasty, "Content": "\n".join(lines)}
        | {"Translation": "\n".join(translations)}
        for _, title, author, dynasty, lines, translations in POEMS
    ]
    path = tmp_path / "works.json"
    path.write_text(json.dumps(works, ensure_ascii=False), encoding="utf-8")
    return path


def _write_config(tmp_path: Path, model: str) -> Path:
    _write_works(tmp_path)
    config = f"""
        [prepare]
        works = ["{tmp_path}/works.json"]
        out = "{tmp_path}/processed"
        eval_fraction = 0.3

        [mine]
        data = "{tmp_path}/processed"
        out = "{tmp_path}/mined"
        model = "{model}"
        num-negatives = 2
        range_min = 0
        range_max = 8
        cache_folder = "{tmp_path}/cache"

        [train]
        data = "{tmp_path}/mined"
        model = "{model}"
        out = "{tmp_path}/model"
        max_steps = 2
        eval_steps = 2
        batch_size = 4
        mini_batch_size = 2

        [evaluate]
        data = "{tmp_path}/processed"
        model = ["{model}", "{tmp_path}/model"]
        out = "{tmp_path}/evaluation"
        bm25 = false

        [index]
        model = "{tmp_path}/model"
        corpus = "{tmp_path}/processed/corpus.jsonl"
        out = "{tmp_path}/index"

        [search]
        index = "{tmp_path}/index"
        queries = ["{POEMS[0][5][0]}"]
        top_k = 2
        json = true
    """
    path = tmp_path / "pipeline.toml"
    path.write_text("\n".join(line.strip() for line in config.splitlines()), encoding="utf-8")
    return path


def _mtimes(tmp_path: Path) -> dict[str, float]:
    return {name: (tmp_path / marker).stat().st_mtime for name, marker in MARKERS.items()}


def test_the_whole_pipeline_runs_once_then_only_what_is_out_of_date(tiny_st_model, tmp_path, capfd):
    path = _write_config(tmp_path, tiny_st_model)
    summary = tmp_path / "summary.json"
    run = lambda *flags: run_pipeline(parse_config(PipelineConfig, ["--config", str(path), *flags]))  # noqa: E731

    outcomes = run("--summary", str(summary))
    assert list(outcomes) == [*MARKERS, "search"] and {row["outcome"] for row in outcomes.values()} == {"ran"}
    # each stage ran as its own process, which the kernel measured
    assert all(row["exit_code"] == 0 and row["seconds"] > 0 and row["peak_rss_mib"] > 50 for row in outcomes.values())
    assert json.loads(summary.read_text())["stages"] == outcomes
    out, err = capfd.readouterr()
    demo = json.loads(out.strip().splitlines()[-1])  # the demo query's answer, printed by the search stage
    assert demo["query"] == POEMS[0][5][0] and len(demo["results"]) == 2
    table = err[err.rindex("pipeline:") :]
    assert re.search(r"train\s+ran\s+[\d,]+ s\s+[\d,]+ MiB", table) and re.search(r"all\s+[\d,]+ s", table)
    first = _mtimes(tmp_path)
    evaluation = json.loads((tmp_path / MARKERS["evaluate"]).read_text())
    assert len(evaluation["rows"]) == 2  # the base model and the fine-tuned one

    # everything fresh: only the demo query (no marker) runs again
    assert {name: row["outcome"] for name, row in run().items()} == {
        **dict.fromkeys(MARKERS, "skipped"),
        "search": "ran",
    }
    assert _mtimes(tmp_path) == first

    # newer training data: train and what reads the model run again, the stages before it do not
    later = time.time() + 5
    os.utime(tmp_path / "mined" / "train.jsonl", (later, later))
    capfd.readouterr()
    outcomes = run()
    assert [name for name, row in outcomes.items() if row["outcome"] == "skipped"] == ["prepare", "mine"]
    assert "replacing the earlier training run" in capfd.readouterr().err
    assert not (tmp_path / ".model.earlier").exists()  # the earlier run went once the new one was complete
    second = _mtimes(tmp_path)
    assert all(second[name] > first[name] for name in ("train", "evaluate", "index"))

    outcomes = run("--force", "--stages", "prepare")
    assert list(outcomes) == ["prepare"] and outcomes["prepare"]["outcome"] == "ran"
    assert _mtimes(tmp_path)["prepare"] > second["prepare"]


def test_freshness_compares_the_marker_with_every_input_file(tmp_path):
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    (folder / "sub" / "b.txt").write_text("b")
    marker = tmp_path / "out" / "done.json"
    assert not is_fresh(marker, [str(folder)])  # no output yet
    marker.parent.mkdir()
    marker.write_text("{}")
    os.utime(folder / "a.txt", (1000, 1000))
    os.utime(folder / "sub" / "b.txt", (2000, 2000))
    os.utime(marker, (3000, 3000))
    assert newest_input([str(folder), "BAAI/bge-base-zh-v1.5"]) == 2000  # a Hub id has no time
    assert is_fresh(marker, [str(folder), "BAAI/bge-base-zh-v1.5"])
    os.utime(folder / "sub" / "b.txt", (4000, 4000))  # a file deep in an input folder changed
    assert not is_fresh(marker, [str(folder)])
    assert not is_fresh(marker, ["no/such/input"])
    assert is_fresh(marker, [])  # no inputs (download): fresh once its marker exists


def test_a_marker_inside_its_input_folder_is_not_its_own_input(tmp_path):
    """An export writes export.json into the model folder it reads."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "modules.json").write_text("[]")
    marker = model / "export.json"
    marker.write_text("{}")
    os.utime(model / "modules.json", (1000, 1000))
    os.utime(marker, (2000, 2000))
    assert is_fresh(marker, [str(model)])
    os.utime(model / "modules.json", (3000, 3000))  # retrained
    assert not is_fresh(marker, [str(model)])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            '[train]\nlearning_rat = 1e-4\n[prepare]\nworks = ["w"]',
            r"\[train\]: unknown field\(s\) learning_rat \(did you mean learning_rate\?\)",
        ),
        ('stages = ["train"]\n[train]\nlr = -1\n', r"\[train\] lr must be > 0"),
        ("[prepare]\n", r"\[prepare\] no input given"),
        ('stages = ["deploy"]\n', "stages must be some of download, prepare, mine, train, export, evaluate"),
        ("force = true\n", "nothing to run: pass --config FILE"),
        ("[tune]\nlr = 1\n", r"unknown field\(s\) tune"),
    ],
)
def test_a_bad_section_is_a_one_line_error_naming_it(tmp_path, capsys, config, message):
    path = tmp_path / "bad.toml"
    path.write_text(config, encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        parse_config(PipelineConfig, ["--config", str(path)])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and re.search(message, error)


def test_a_forced_training_run_that_fails_keeps_the_earlier_run_byte_for_byte(tiny_st_model, tmp_path, capfd):
    out = tmp_path / "model"
    (out / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    for name, content in [
        ("checkpoints/checkpoint-2/model.safetensors", b"checkpoint weights"),
        ("checkpoints/checkpoint-2/trainer_state.json", b"{}"),
        ("model.safetensors", b"final weights"),
        ("modules.json", b"[]"),
        ("train_log.jsonl", b'{"step": 2}\n'),
    ]:
        (out / name).write_bytes(content)
    earlier = {str(path.relative_to(out)): path.read_bytes() for path in out.rglob("*") if path.is_file()}
    (tmp_path / "empty").mkdir()  # the data is missing: the stage fails on its input
    path = tmp_path / "pipeline.toml"
    path.write_text(f'[train]\ndata = "{tmp_path}/empty"\nmodel = "{tiny_st_model}"\nout = "{out}"\n', encoding="utf-8")
    summary = tmp_path / "summary.json"
    with pytest.raises(SystemExit) as exit_info:  # the stage's own exit code; its own line says why
        run_pipeline(parse_config(PipelineConfig, ["--config", str(path), "--force", "--summary", str(summary)]))
    err = capfd.readouterr().err
    assert exit_info.value.code == 2 and "empty" in err and re.search(r"train\s+failed", err)
    assert json.loads(summary.read_text())["stages"]["train"]["exit_code"] == 2
    summary.unlink()
    assert {str(path.relative_to(out)): path.read_bytes() for path in out.rglob("*") if path.is_file()} == earlier
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty", "model", "pipeline.toml"]
    assert "put the earlier run back" in err


def test_every_section_is_checked_whatever_stages_run(tmp_path, capsys):
    path = tmp_path / "pipeline.toml"
    path.write_text('[prepare]\nworks = ["w.json"]\n[train]\nlr = -1\n', encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        parse_config(PipelineConfig, ["--config", str(path), "--stages", "prepare"])
    assert exit_info.value.code == 2 and "[train] lr must be > 0" in capsys.readouterr().err


def test_only_the_chosen_stages_need_a_section(tmp_path):
    path = tmp_path / "train-only.toml"
    path.write_text('[train]\nmodel = "m"\n', encoding="utf-8")
    config = parse_config(PipelineConfig, ["--config", str(path), "--stages", "train", "index"])
    assert list(stage_configs(config)) == ["train", "index"]  # pipeline order, whatever the flag's order
    assert stage_configs(config)["train"].model == "m"


@pytest.mark.parametrize("preset", sorted((ROOT / "configs").glob("*.toml")), ids=lambda path: path.name)
def test_the_shipped_presets_are_valid(preset):
    configs = stage_configs(parse_config(PipelineConfig, ["--config", str(preset)]))
    assert configs["train"].model == configs["mine"].model  # the base model mines its own negatives
    assert configs["train"].data == configs["mine"].out and configs["index"].model == configs["train"].out
    assert configs["train"].out in configs["evaluate"].model
    if "export" in configs:  # the stages that encode with an export run after it
        runtime = configs["index"].backend.split("-")[0]
        assert configs["export"].model == configs["train"].out and runtime in ("torch", *configs["export"].backend)
    if "search" in configs:
        assert configs["search"].index == configs["index"].out


def test_the_cpu_preset_is_the_whole_job():
    preset = ROOT / "configs" / "cpu-e5-small.toml"
    configs = stage_configs(parse_config(PipelineConfig, ["--config", str(preset)]))
    assert list(configs) == ["download", "prepare", "mine", "train", "export", "evaluate", "index", "search"]
    assert configs["prepare"].poems and configs["index"].corpus == f"{configs['prepare'].out}/corpus.jsonl"
    assert configs["index"].backend == "openvino-int8" and configs["search"].top_k == 3


def test_a_stage_s_peak_memory_is_its_own_not_the_pipeline_s(tmp_path):
    """A program started by exec keeps the peak of the memory it replaced: the launcher keeps the pipeline's out."""
    ballast = bytearray(600 * 2**20)  # the pipeline holding memory, as it holds torch after checking [train]
    ballast[:: 2**12] = b"\x01" * len(range(0, len(ballast), 2**12))  # every page written: resident
    row = run_stage("prepare", {"works": [str(_write_works(tmp_path))], "out": str(tmp_path / "processed")})
    assert row["exit_code"] == 0 and (tmp_path / "processed" / "stats.json").is_file()
    assert 10 < row["peak_rss_mib"] < 400, row
    del ballast
