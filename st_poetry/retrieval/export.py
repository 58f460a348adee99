"""Export a model for fast CPU encoding: `just export` (st-poetry export).

Into the model folder, where sentence-transformers' own ONNX/OpenVINO loader looks (config.BACKENDS):

- `onnx/model.onnx`: the transformer traced by `torch.onnx.export` (the dynamo exporter: the TorchScript one
  traces transformers 5's attention masks wrongly), token ids in, `last_hidden_state` out;
- `onnx/model_qint8_dynamic.onnx`: its int8 copy by ONNX Runtime's `quantize_dynamic` (weights int8 per
  channel, activations quantized on the fly: no calibration data, and the quality cost `just evaluate` measures);
- `openvino/openvino_model.xml` (+ .bin): the ONNX graph converted by `openvino.convert_model`;
- `openvino/openvino_model_qint8_quantized.xml`: its int8 copy by NNCF's static quantization, whose activation
  ranges come from descriptions and lines of `--calibration-data`, each with the model's own prompt.

Pooling, normalization, prompts and the tokenizer stay the saved model's, so `--backend onnx-int8` (and the
others) in every stage encodes like `--backend torch`, only faster; the export ends by checking exactly that.
Each file is written to a temporary folder and moved in when complete (files.atomic_output_dir, merge mode).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from st_poetry.core.config import BACKENDS, ExportConfig
from st_poetry.core.errors import UserError
from st_poetry.core.files import atomic_output_dir, write_json
from st_poetry.core.log import get_logger
from st_poetry.core.modeling import load_model
from st_poetry.core.prompts import document_prompt, query_prompt
from st_poetry.core.runtimes import require
from st_poetry.core.schema import CORPUS, read_split, require_files
from st_poetry.core.tables import format_table

logger = get_logger(__name__)

# what the export's check encodes with torch and with every exported file
CHECK_QUERIES = ("山中下雨后傍晚的秋天", "明亮的月光洒在床前", "独自在大雪覆盖的寒冷江面上垂钓")
CHECK_LINES = ("空山新雨后，天气晚来秋。", "床前明月光，疑是地上霜。", "孤舟蓑笠翁，独钓寒江雪。")


def _name(backend: str) -> str:
    return Path(BACKENDS[backend][1]).name


def _subfolder(backend: str) -> str:
    return str(Path(BACKENDS[backend][1]).parent)


class LastHiddenState(torch.nn.Module):
    """The Hugging Face model with named tensor inputs and one output: the graph the runtimes run."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state


def export_onnx(model: SentenceTransformer, path: Path) -> None:
    """Trace the model's transformer into `path`, batch size and sequence length dynamic."""
    require("onnxscript")  # the dynamo exporter's dependency
    features = model.preprocess(list(CHECK_LINES[:2]))
    names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in features]
    batch, length = torch.export.Dim("batch_size"), torch.export.Dim("sequence_length")
    with torch.no_grad():
        torch.onnx.export(
            LastHiddenState(model[0].auto_model).eval(),
            tuple(features[name] for name in names),
            str(path),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_shapes=tuple({0: batch, 1: length} for _ in names),
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def quantize_onnx(source: Path, path: Path) -> None:
    """Dynamic int8: weights per output channel, activations scaled per batch at run time."""
    require("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(path), weight_type=QuantType.QInt8, per_channel=True)


def calibration_feeds(model: SentenceTransformer, config: ExportConfig, input_names: Sequence[str]) -> list[dict]:
    """One feed per text: seeded samples of the train descriptions (with the query prompt) and corpus lines
    (with the document prompt), what the quantized model will see."""
    what = "a `just prepare` folder, whose texts calibrate the openvino int8 export (--calibration-data)"
    folder = require_files(config.calibration_data, ("train.jsonl", "corpus.jsonl"), what)
    rng = random.Random(config.seed)
    half = config.calibration_size // 2
    queries = sorted({row["anchor"] for row in read_split(folder / "train.jsonl").rows})
    lines = sorted({row["text"] for row in CORPUS.read(folder / "corpus.jsonl")})
    texts = [(query_prompt(model) or "") + text for text in rng.sample(queries, min(half, len(queries)))]
    texts += [(document_prompt(model) or "") + text for text in rng.sample(lines, min(half, len(lines)))]
    feeds = []
    for text in texts:
        features = model.preprocess([text])
        feeds.append({name: features[name].numpy() for name in input_names})
    return feeds


def export_openvino(model: SentenceTransformer, onnx_file: Path, tmp: Path, config: ExportConfig) -> list[str]:
    """Convert the ONNX graph into `tmp`; with int8, also quantize it statically with NNCF. Returns the backends
    written."""
    ov = require("openvino")
    graph = ov.convert_model(str(onnx_file))
    ov.save_model(graph, str(tmp / _name("openvino")), compress_to_fp16=False)
    if config.quantize == "none":
        return ["openvino"]
    nncf = require("nncf")
    feeds = calibration_feeds(model, config, [graph_input.any_name for graph_input in graph.inputs])
    quantized = nncf.quantize(graph, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds))
    ov.save_model(quantized, str(tmp / _name("openvino-int8")), compress_to_fp16=False)
    return ["openvino", "openvino-int8"]


def check_exports(folder: Path, reference: SentenceTransformer, names: Sequence[str], config: ExportConfig) -> dict:
    """Load every written file as the stages will and compare its embeddings with torch's: cosine per text."""
    expected = np.concatenate(
        [reference.encode_query(list(CHECK_QUERIES)), reference.encode_document(list(CHECK_LINES))]
    )
    report = {}
    for name in names:
        model = load_model(str(folder), max_seq_length=config.max_seq_length, backend=name)
        got = np.concatenate([model.encode_query(list(CHECK_QUERIES)), model.encode_document(list(CHECK_LINES))])
        cosines = (got * expected).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
        file = folder / BACKENDS[name][1]
        report[name] = {
            "file": BACKENDS[name][1],
            "mb": round(
                sum(path.stat().st_size for path in (file, file.with_suffix(".bin")) if path.is_file()) / 2**20, 1
            ),
            "min_cosine_to_torch": round(float(cosines.min()), 5),
        }
    return report


def export(config: ExportConfig) -> dict[str, Any]:
    """Write the requested exports into the model folder and check each against torch; returns the check."""
    folder = Path(config.model)
    if not folder.is_dir():
        raise UserError(f"model folder not found: {folder} (just export works on a local folder)")
    require("onnxscript")  # every export starts from the ONNX graph; fail before the slow work
    for backend in config.backend:
        require("onnxruntime" if backend == "onnx" else "openvino")
    if "openvino" in config.backend and config.quantize == "int8":
        require("nncf")
    model = load_model(str(folder), max_seq_length=config.max_seq_length)

    # Each subfolder is staged by atomic_output_dir and its files moved in beside any others (the fp32 graph, or
    # an OpenVINO .xml after its .bin, last), so an interrupted export leaves the previous files as they were.
    int8 = config.quantize == "int8"
    written = ["onnx"]
    with atomic_output_dir(folder / _subfolder("onnx"), _name("onnx"), merge=True) as onnx_tmp:
        onnx_file = onnx_tmp / _name("onnx")
        logger.info(f"exporting {folder} to ONNX")
        export_onnx(model, onnx_file)
        if "onnx" in config.backend and int8:
            logger.info("quantizing the ONNX graph to int8 (dynamic)")
            quantize_onnx(onnx_file, onnx_tmp / _name("onnx-int8"))
            written.append("onnx-int8")
        if "openvino" in config.backend:
            logger.info("converting to OpenVINO" + " and quantizing to int8 (NNCF, calibrated)" * int8)
            last = (_name("openvino-int8"),) if int8 else ()
            with atomic_output_dir(folder / _subfolder("openvino"), _name("openvino"), merge=True, last=last) as ov_tmp:
                written += export_openvino(model, onnx_file, ov_tmp, config)

    report = check_exports(folder, model, written, config)
    rows = [
        [name, row["file"], f"{row['mb']:.1f}", f"{row['min_cosine_to_torch']:.4f}"] for name, row in report.items()
    ]
    table = format_table(["--backend", "file", "MB", "min cosine to torch"], rows, align="llr", indent="  ")
    logger.info(f"\nexported {folder}:\n{table}")
    write_json(folder / ExportConfig.MARKER, report)  # last: every file is in place and checked
    return report
