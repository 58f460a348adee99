"""The exported graphs' runtimes, ONNX Runtime and OpenVINO, opened without torch: core.backends runs a graph
behind sentence-transformers' Transformer module, retrieval.encoder alone (the query path of an exported model)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from st_poetry.core.errors import UserError

# the extra that installs each runtime's packages: `pip install -e ".[onnx]"`
EXTRAS = {"onnxruntime": "onnx", "onnx": "onnx", "onnxscript": "onnx", "openvino": "openvino", "nncf": "openvino"}


def require(module: str) -> ModuleType:
    """Import an optional runtime package, or fail in one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS[module]
        raise UserError(f"{module} is not installed: pip install -e '.[{extra}]' (the {extra} extra)") from None


Feed = dict[str, np.ndarray]


@dataclass
class Graph:
    """An exported graph opened by its runtime: `run` answers one feed with both cores (the latency of a query);
    `map` answers many, handing each output to `done(i, output)`, with the requests OpenVINO keeps in flight when
    opened for throughput (one stream per core: an index build), else one after another."""

    run: Callable[[Feed], np.ndarray]
    input_names: list[str]
    run_async: Callable[[Iterable[Feed], Callable[[int, np.ndarray], None]], None] | None = None

    def map(self, feeds: Iterable[Feed], done: Callable[[int, np.ndarray], None]) -> None:
        if self.run_async is not None:
            self.run_async(feeds, done)
            return
        for i, feed in enumerate(feeds):
            done(i, self.run(feed))


def _open_onnx(path: Path, throughput: bool) -> Graph:
    ort = require("onnxruntime")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own error types (InvalidProtobuf, Fail, ...) derive from Exception
        raise UserError(
            f"{path} is not a loadable ONNX model ({str(error).splitlines()[0]}): "
            f"re-export it with `just export --model {path.parent.parent}`"
        ) from None
    return Graph(lambda feed: session.run(None, feed)[0], [graph_input.name for graph_input in session.get_inputs()])


def _open_openvino(path: Path, throughput: bool) -> Graph:
    ov = require("openvino")
    # f32: on a CPU with bf16 (recent Xeons and EPYCs) OpenVINO would otherwise compute in bf16 by default
    settings = {"INFERENCE_PRECISION_HINT": "f32", **({"PERFORMANCE_HINT": "THROUGHPUT"} if throughput else {})}
    try:
        compiled = ov.Core().compile_model(str(path), "CPU", settings)
    except RuntimeError:
        raise UserError(
            f"{path} is not a loadable OpenVINO model (or its .bin is missing or damaged): "
            f"re-export it with `just export --model {path.parent.parent} --backend openvino`"
        ) from None

    def run_async(feeds: Iterable[Feed], done: Callable[[int, np.ndarray], None]) -> None:
        queue = ov.AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        queue.set_callback(lambda request, i: done(i, request.get_output_tensor(0).data))
        for i, feed in enumerate(feeds):
            queue.start_async(feed, i)
        queue.wait_all()

    names = [graph_input.any_name for graph_input in compiled.inputs]
    return Graph(lambda feed: compiled(feed)[0], names, run_async if throughput else None)


def open_graph(runtime: str, path: Path, throughput: bool = False) -> Graph:
    """An exported graph ("onnx" or "openvino"), opened for the latency of one call or the throughput of many."""
    return (_open_onnx if runtime == "onnx" else _open_openvino)(path, throughput)
