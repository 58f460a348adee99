"""The exported graphs' runtimes, ONNX Runtime and OpenVINO, opened without torch: core.backends runs a graph
behind sentence-transformers' Transformer module, retrieval.encoder alone (the query path of an exported model)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
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


def _open_onnx(path: Path) -> tuple[Callable[[dict[str, np.ndarray]], np.ndarray], list[str]]:
    ort = require("onnxruntime")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own error types (InvalidProtobuf, Fail, ...) derive from Exception
        raise UserError(
            f"{path} is not a loadable ONNX model ({str(error).splitlines()[0]}): "
            f"re-export it with `just export --model {path.parent.parent}`"
        ) from None
    return (lambda feed: session.run(None, feed)[0]), [graph_input.name for graph_input in session.get_inputs()]


def _open_openvino(path: Path) -> tuple[Callable[[dict[str, np.ndarray]], np.ndarray], list[str]]:
    ov = require("openvino")
    try:
        # f32: on a CPU with bf16 (recent Xeons and EPYCs) OpenVINO would otherwise compute in bf16 by default
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    except RuntimeError:
        raise UserError(
            f"{path} is not a loadable OpenVINO model (or its .bin is missing or damaged): "
            f"re-export it with `just export --model {path.parent.parent} --backend openvino`"
        ) from None
    return (lambda feed: compiled(feed)[0]), [graph_input.any_name for graph_input in compiled.inputs]


def open_graph(runtime: str, path: Path) -> tuple[Callable[[dict[str, np.ndarray]], np.ndarray], list[str]]:
    """An exported graph ("onnx" or "openvino") as a function of its named inputs, and those inputs' names."""
    return (_open_onnx if runtime == "onnx" else _open_openvino)(path)
