from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

from st_poetry.cli import main as cli_main
from st_poetry.core import modeling
from st_poetry.core.config import TrainConfig
from st_poetry.core.errors import UserError
from st_poetry.core.modeling import load_model, load_reranker
from st_poetry.core.prompts import document_prompt, query_prompt
from st_poetry.training.train import load_base_model


def test_plain_checkpoint_gets_cls_pooling_and_normalize(tiny_hf_model):
    model = load_model(tiny_hf_model, max_seq_length=32)
    assert isinstance(model[1], Pooling) and model[1].pooling_mode == "cls"
    assert isinstance(model[2], Normalize)
    assert model.max_seq_length == 32
    assert query_prompt(model) is None and document_prompt(model) is None


def test_sentence_transformer_keeps_its_pooling_and_prompts(tiny_st_model):
    model = load_model(tiny_st_model)
    assert model[1].pooling_mode == "mean"
    assert (query_prompt(model), document_prompt(model)) == ("query: ", "passage: ")
    assert model.prompts["query"] == "query: "


def test_document_prompt_is_found_the_way_encode_document_finds_it(tiny_st_model):
    model = load_model(tiny_st_model)
    model.prompts = {"query": "q: ", "passage": "p: "}  # no "document" key: encode_document falls back to "passage"
    assert document_prompt(model) == "p: "
    assert (model.encode_document(["明月"]) == model.encode(["明月"], prompt="p: ")).all()


def test_query_instruction_becomes_the_query_prompt(tiny_hf_model):
    model = load_model(tiny_hf_model, query_instruction="为这个句子生成表示以用于检索相关文章：")
    assert query_prompt(model) == "为这个句子生成表示以用于检索相关文章："
    assert model.prompts["query"].startswith("为这个句子")


INSTRUCTION = "为这个句子生成表示以用于检索相关文章："


def test_training_records_the_query_instruction_in_the_saved_model(tiny_st_model, tmp_path, capsys):
    config = TrainConfig(model=tiny_st_model, query_instruction=INSTRUCTION, out=str(tmp_path / "out"))
    model = load_base_model(config)  # the model train() fine-tunes and saves
    assert "becomes '为这个句子" in capsys.readouterr().err  # it replaced the e5-style "query: "
    model.save(str(tmp_path / "trained"))
    reloaded = load_model(str(tmp_path / "trained"))
    assert query_prompt(reloaded) == INSTRUCTION and document_prompt(reloaded) == "passage: "
    # the same instruction again is no conflict
    assert query_prompt(load_model(str(tmp_path / "trained"), query_instruction=INSTRUCTION)) == INSTRUCTION


def test_an_instruction_that_contradicts_the_recorded_prompt_is_refused(tiny_st_model):
    with pytest.raises(UserError, match=r"contradicts the query prompt 'query: ' that .* records"):
        load_model(tiny_st_model, query_instruction=INSTRUCTION)


@pytest.mark.parametrize("stage", ["mine", "evaluate", "index"])
def test_encoding_stages_refuse_a_contradicting_instruction(stage, tiny_st_model, prepared_dir, tmp_path, capsys):
    out = tmp_path / "out"
    common = ["--model", tiny_st_model, "--out", str(out), "--query-instruction", INSTRUCTION]
    inputs = {
        "mine": ["--data", str(prepared_dir)],
        "evaluate": ["--data", str(prepared_dir)],
        "index": ["--corpus", str(prepared_dir / "corpus.jsonl")],
    }
    with pytest.raises(SystemExit) as exit_info:
        cli_main([stage, *inputs[stage], *common])
    assert exit_info.value.code == 2
    assert "contradicts the query prompt 'query: '" in capsys.readouterr().err
    assert not out.exists()


def test_missing_local_folder_is_one_clear_line(tmp_path):
    with pytest.raises(UserError, match="model folder not found"):
        load_model(str(tmp_path / "nope" / "model"))


def test_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(UserError, match="not a model folder"):
        load_model(str(tmp_path))


def test_unreachable_hub_says_what_to_pass(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="--model PATH"):
        load_model("some-org/not-cached-model")


@pytest.mark.parametrize(("fixture", "load"), [("tiny_st_model", load_model), ("tiny_reranker", load_reranker)])
def test_a_model_without_its_tokenizer_files_is_refused(tmp_path, request, fixture, load):
    # It would load with only the special tokens and encode (or score) every text alike.
    folder = tmp_path / "no-tokenizer"
    shutil.copytree(request.getfixturevalue(fixture), folder)
    for path in [*folder.glob("tokenizer*"), *folder.glob("vocab.txt")]:
        path.unlink()
    with pytest.raises(UserError, match=r"tokenizer has 5 tokens for 21,018 embedding rows"):
        load(str(folder))


def test_truncated_weights_are_one_clear_line(tmp_path, tiny_st_model):
    folder = tmp_path / "truncated"
    shutil.copytree(tiny_st_model, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UserError, match=rf"cannot load model '{folder}': .*deserializing header"):
        load_model(str(folder))


def test_a_relative_path_that_does_not_exist_is_not_a_hub_failure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()

    def no_hub(*args, **kwargs):
        raise AssertionError("models/nope names a folder under ./models: the Hub must not be asked")

    monkeypatch.setattr(modeling, "hf_hub_download", no_hub)
    with pytest.raises(UserError, match=r"^model folder not found: models/nope$"):
        load_model("models/nope")


def test_the_hubs_retry_warnings_stay_out_of_the_one_line_error():
    """An unreachable Hub makes huggingface_hub warn at each retry; load_model already says it in one line."""
    code = (
        "import logging, st_poetry.core.modeling; "
        "print(logging.getLogger('huggingface_hub.utils._http').getEffectiveLevel() >= logging.ERROR)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True"
