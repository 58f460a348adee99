"""`just export` and `--backend`: exported ONNX/OpenVINO files encode like torch in every stage that encodes."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from st_poetry.cli import main
from st_poetry.cli.options import parse_config
from st_poetry.core.backends import RuntimeModel
from st_poetry.core.config import BACKENDS, EvaluateConfig, ExportConfig, IndexConfig
from st_poetry.core.errors import UserError
from st_poetry.core.modeling import load_model
from st_poetry.core.schema import CORPUS, PAIR
from st_poetry.evaluation.evaluate import evaluate
from st_poetry.retrieval.encoder import ExportedEncoder, open_encoder
from st_poetry.retrieval.export import export
from st_poetry.retrieval.search import (
    INDEX_INFO,
    PROBE_MIN_COSINE,
    PROBE_MIN_COSINE_ACROSS_BACKENDS,
    PoetryIndex,
    build_index,
)
from st_poetry.training.mine import model_fingerprint
from tests.conftest import prepared_rows

pytest.importorskip("onnxruntime", reason="the onnx extra: pip install -e '.[onnx]'")
pytest.importorskip("onnxscript", reason="the onnx extra: pip install -e '.[onnx]'")
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None
EXPORTED = ["onnx", "onnx-int8"] + (["openvino", "openvino-int8"] if HAS_OPENVINO else [])
TEXTS = ["空山新雨后", "明亮的月光洒在床前", "独钓寒江雪", "春天睡醒不觉天已大亮"]


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory, tiny_st_model) -> str:
    """A copy of the tiny sentence-transformers model with every export this machine can write."""
    root = tmp_path_factory.mktemp("exported")
    folder = root / "tiny-st"
    shutil.copytree(tiny_st_model, folder)
    calibration = root / "processed"
    calibration.mkdir()
    train, _, corpus = prepared_rows()
    PAIR.write(calibration / "train.jsonl", train)
    CORPUS.write(calibration / "corpus.jsonl", corpus)
    backends = ["onnx", "openvino"] if HAS_OPENVINO else ["onnx"]
    export(ExportConfig(model=str(folder), backend=backends, calibration_data=str(calibration), calibration_size=20))
    return str(folder)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_export_writes_the_files_where_sentence_transformers_looks(exported_model):
    for name in EXPORTED:
        assert (Path(exported_model) / BACKENDS[name][1]).is_file(), name
    assert not list(Path(exported_model).glob(".*partial*")), "a staging folder is left behind"
    marker = json.loads((Path(exported_model) / ExportConfig.MARKER).read_text())  # written last: the check
    assert set(marker) == set(EXPORTED) and all(row["min_cosine_to_torch"] > 0.98 for row in marker.values())


@pytest.mark.parametrize("backend", EXPORTED)
def test_exported_backend_encodes_like_torch_with_the_saved_prompts(exported_model, backend):
    torch_model = load_model(exported_model)
    model = load_model(exported_model, backend=backend)
    assert isinstance(model[0].auto_model, RuntimeModel) and model[1].pooling_mode == "mean"
    assert model.prompts == torch_model.prompts
    for encode in ("encode_query", "encode_document"):
        got, expected = getattr(model, encode)(TEXTS), getattr(torch_model, encode)(TEXTS)
        if backend.endswith("int8"):
            assert _cosines(got, expected).min() > 0.98
        else:
            np.testing.assert_allclose(got, expected, atol=1e-5)
    # the prompt is applied by the library's module, as with torch
    np.testing.assert_allclose(model.encode_query(TEXTS), model.encode(TEXTS, prompt="query: "), atol=1e-6)


def test_a_plain_checkpoint_exports_and_keeps_cls_pooling(tmp_path, tiny_hf_model):
    folder = tmp_path / "tiny-bert"
    shutil.copytree(tiny_hf_model, folder)
    export(ExportConfig(model=str(folder), quantize="none"))
    assert not (folder / BACKENDS["onnx-int8"][1]).exists()
    model = load_model(str(folder), backend="onnx")
    assert model[1].pooling_mode == "cls"
    np.testing.assert_allclose(model.encode(TEXTS), load_model(str(folder)).encode(TEXTS), atol=1e-5)


def test_each_export_has_its_own_fingerprint_for_mines_cache(exported_model):
    prints = {name: model_fingerprint(load_model(exported_model, backend=name)) for name in ["torch", *EXPORTED]}
    assert len(set(prints.values())) == len(prints)


def test_missing_export_names_just_export(tiny_st_model):
    with pytest.raises(UserError, match=r"has no onnx/model_qint8_dynamic\.onnx: export it first with `just export"):
        load_model(tiny_st_model, backend="onnx-int8")


def test_a_corrupt_onnx_file_is_one_line_without_traceback(capsys, tmp_path, exported_model, prepared_dir):
    folder = tmp_path / "model"
    shutil.copytree(exported_model, folder)
    (folder / "onnx" / "model.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(SystemExit) as exit_info:
        main(["index", "--model", str(folder), "--backend", "onnx", "--corpus", str(prepared_dir / "corpus.jsonl")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a loadable ONNX model" in err and "just export" in err


def test_unknown_backend_lists_the_choices(capsys):
    with pytest.raises(SystemExit):
        parse_config(IndexConfig, ["--backend", "tensorrt"])
    err = capsys.readouterr().err
    assert "unknown backend 'tensorrt'" in err and "onnx-int8" in err and "openvino:FILE" in err


def test_a_missing_runtime_names_its_extra(monkeypatch, exported_model):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(UserError, match=r"pip install -e '\.\[onnx\]'"):
        load_model(exported_model, backend="onnx")


def test_index_records_its_backend_and_queries_use_it(tmp_path, exported_model, prepared_dir):
    out = tmp_path / "index"
    build_index(
        IndexConfig(model=exported_model, corpus=str(prepared_dir / "corpus.jsonl"), out=str(out), backend="onnx")
    )
    info = json.loads((out / INDEX_INFO).read_text(encoding="utf-8"))
    assert (info["backend"], info["model_file"]) == ("onnx", "onnx/model.onnx")
    index = PoetryIndex(out)
    assert index.backend == "onnx" and isinstance(index.model, ExportedEncoder)  # the query path needs no torch
    # torch encodes like the fp32 export: the probe accepts it
    assert PoetryIndex(out, backend="torch").search(["空山新雨后"], top_k=1)[0][0]["text"] == "空山新雨后"


def test_evaluate_puts_backends_of_one_model_side_by_side(tmp_path, exported_model, prepared_dir):
    report = evaluate(
        EvaluateConfig(
            data=str(prepared_dir),
            model=[exported_model],
            backend=["torch", "onnx", "onnx-int8"],
            out=str(tmp_path / "evaluation"),
            bm25=False,
        )
    )
    rows = {row["name"]: row for row in report["rows"]}
    assert list(rows) == ["tiny-st torch", "tiny-st onnx", "tiny-st onnx-int8"]
    assert [row["backend"] for row in rows.values()] == ["torch", "onnx", "onnx-int8"]
    assert rows["tiny-st onnx"]["retrieval"] == pytest.approx(rows["tiny-st torch"]["retrieval"], abs=1e-6)
    assert "onnx / openvino rows" in (tmp_path / "evaluation" / "evaluation.md").read_text(encoding="utf-8")


def test_probe_threshold_lets_another_backend_of_the_same_weights_through(tmp_path, exported_model, prepared_dir):
    """A probe moved as far as quantization noise moves it is accepted across backends, refused within one; one
    moved as far as another model moves it is refused either way.

    The stored probe is set at a chosen cosine from the onnx probe; a query backend's own probe differs from that by
    its quantization noise, so each chosen cosine keeps a margin of over 0.005 from both thresholds, and the reported
    cosine is checked to within that margin, not to a quantizer's fourth decimal."""
    out = tmp_path / "index"
    build_index(
        IndexConfig(model=exported_model, corpus=str(prepared_dir / "corpus.jsonl"), out=str(out), backend="onnx")
    )
    info = json.loads((out / INDEX_INFO).read_text(encoding="utf-8"))
    probe = np.array(info["probe"])
    noise = np.random.default_rng(0).normal(size=probe.shape)
    noise -= noise.dot(probe) * probe  # orthogonal to the probe: cos(angle) of the mix is exact
    noise /= np.linalg.norm(noise)
    margin = 0.005
    inside_across, outside_both = PROBE_MIN_COSINE_ACROSS_BACKENDS + 2 * margin, PROBE_MIN_COSINE_ACROSS_BACKENDS - 0.08
    assert inside_across < PROBE_MIN_COSINE - margin
    for cosine, same_backend_ok, other_backend_ok in [(inside_across, False, True), (outside_both, False, False)]:
        info["probe"] = (cosine * probe + np.sqrt(1 - cosine**2) * noise).tolist()
        (out / INDEX_INFO).write_text(json.dumps(info), encoding="utf-8")
        for backend, ok in [(None, same_backend_ok), ("onnx-int8", other_backend_ok), ("torch", other_backend_ok)]:
            if ok:
                PoetryIndex(out, backend=backend)
                continue
            with pytest.raises(UserError, match=r"probe cosine (\d\.\d+)") as refused:
                PoetryIndex(out, backend=backend)
            reported = float(re.search(r"probe cosine (\d\.\d+)", str(refused.value)).group(1))
            assert reported == pytest.approx(cosine, abs=margin), backend


@pytest.mark.parametrize("throughput", [False, True], ids=["latency", "throughput"])
@pytest.mark.parametrize("backend", EXPORTED)
def test_the_torch_free_encoder_encodes_like_sentence_transformers(exported_model, backend, throughput):
    """As a query path (one call at a time) and as an index build opens it (OpenVINO: requests in flight whose
    answers come back in any order), row i is text i's embedding."""
    light = open_encoder(exported_model, max_seq_length=12, backend=backend, throughput=throughput)
    library = load_model(exported_model, max_seq_length=12, backend=backend)
    assert isinstance(light, ExportedEncoder) and light.prompts == library.prompts
    texts = [*TEXTS, " 前后有空格 ", "长" * 40]  # spaces kept as the library keeps them; a long text cut at 12 tokens
    texts += [text[: 1 + i % 5] for i, text in enumerate(texts * 3)]  # many batches of unlike lengths
    for encode in ("encode_query", "encode_document"):
        got, expected = getattr(light, encode)(texts, batch_size=2), getattr(library, encode)(texts)
        if backend == "onnx-int8":  # activations quantized per batch: other batches, other rounding
            assert _cosines(got, expected).min() > 0.9999
        else:
            np.testing.assert_allclose(got, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=2e-5)
    assert light.get_embedding_dimension() == library.get_embedding_dimension()


def test_a_model_the_light_encoder_cannot_reproduce_is_loaded_by_sentence_transformers(tmp_path, exported_model):
    assert not isinstance(open_encoder(exported_model, max_seq_length=12, backend="torch"), ExportedEncoder)
    folder = tmp_path / "max-pooled"
    shutil.copytree(exported_model, folder)
    pooling = folder / "1_Pooling" / "config.json"
    pooling.write_text(json.dumps({**json.loads(pooling.read_text()), "pooling_mode": "max"}), encoding="utf-8")
    model = open_encoder(str(folder), max_seq_length=12, backend="onnx")
    assert isinstance(model[0].auto_model, RuntimeModel) and model[1].pooling_mode == "max"


def test_searching_an_exported_index_loads_no_torch(tmp_path, exported_model, prepared_dir):
    out = tmp_path / "index"
    config = IndexConfig(model=exported_model, corpus=str(prepared_dir / "corpus.jsonl"), out=str(out), backend="onnx")
    build_index(config)
    code = (
        "import sys; from st_poetry.retrieval.search import PoetryIndex; "
        f"hit = PoetryIndex({str(out)!r}).search(['空山新雨后'], top_k=1, hybrid=True)[0][0]; "
        "print(hit['text'], *[m for m in ('torch', 'sentence_transformers') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["空山新雨后"]
