"""Encode with an exported ONNX Runtime or OpenVINO graph instead of torch (`--backend`, files from `just export`).

sentence-transformers can load these files itself (`SentenceTransformer(DIR, backend="onnx",
model_kwargs={"file_name": ...})`), but only through optimum, whose releases pin an older transformers than this
project's (the versions checked: docs/BENCHMARKS.md#backends). So the same files are run here by the runtimes
themselves, behind the library's own Transformer module: tokenizer, prompts, token limit and the pooling after it
stay the library's, only the forward pass changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Transformer
from transformers.modeling_outputs import BaseModelOutput

from st_poetry.core.errors import UserError
from st_poetry.core.files import sha256
from st_poetry.core.runtimes import open_graph


class RuntimeModel(torch.nn.Module):
    """Stands in for the Hugging Face model inside the library's Transformer module: the same token inputs,
    `last_hidden_state` out, computed by ONNX Runtime or OpenVINO from an exported graph.

    The file's sha256 is a buffer, so what fingerprints a model by its state_dict (mine's embedding cache)
    tells two exports apart.
    """

    def __init__(self, path: Path, runtime: str, config: Any) -> None:
        super().__init__()
        self.config = config
        self.runtime = runtime
        self.path = path
        self.graph = open_graph(runtime, path)
        self.register_buffer("file_sha256", torch.tensor(list(bytes.fromhex(sha256(path))), dtype=torch.uint8))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        **_: Any,
    ) -> BaseModelOutput:
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if token_type_ids is None:
            given["token_type_ids"] = torch.zeros_like(input_ids)
        hidden = self.graph.run({name: given[name].cpu().numpy() for name in self.graph.input_names})
        return BaseModelOutput(last_hidden_state=torch.from_numpy(np.asarray(hidden)))


class RuntimeTransformer(Transformer):
    """The library's Transformer module running a RuntimeModel when its backend is onnx or openvino."""

    def _load_model(self, model_name_or_path, transformer_task, config, backend, is_peft_model, **model_kwargs):
        if backend == "torch":
            return super()._load_model(
                model_name_or_path, transformer_task, config, backend, is_peft_model, **model_kwargs
            )
        return RuntimeModel(Path(model_name_or_path) / model_kwargs["file_name"], backend, config)


def _check_export(name_or_path: str, runtime: str, file: str) -> dict[str, Any]:
    folder = Path(name_or_path)
    if not folder.is_dir():
        raise UserError(f"--backend {runtime} runs a file exported into a local model folder: {name_or_path!r} is none")
    if not (folder / file).is_file():
        raise UserError(
            f"{folder} has no {file}: export it first with `just export --model {folder} --backend {runtime}`"
        )
    return {"backend": runtime, "model_kwargs": {"file_name": file}}


def exported_transformer(name_or_path: str, runtime: str, file: str) -> RuntimeTransformer:
    """The Transformer module of a plain Hugging Face checkpoint folder, running its exported `file`."""
    return RuntimeTransformer(name_or_path, **_check_export(name_or_path, runtime, file))


def exported_sentence_transformer(name_or_path: str, runtime: str, file: str) -> SentenceTransformer:
    """A sentence-transformers model folder loaded as saved (prompts, pooling, normalization), its Transformer
    module running the exported `file`.

    `_load_with_module_classes` is how the library itself reloads a model with some modules.json types mapped
    to given classes; the project pins sentence-transformers < 7, and tests/test_backends.py compares the
    embeddings with torch's, so a change there fails loudly.
    """
    kwargs = _check_export(name_or_path, runtime, file)
    types = [entry["type"] for entry in json.loads((Path(name_or_path) / "modules.json").read_text(encoding="utf-8"))]
    classes = {ref: RuntimeTransformer for ref in types if ref.rsplit(".", 1)[-1] == "Transformer"}
    if not classes:
        raise UserError(f"{name_or_path}: no Transformer module in modules.json to run with --backend {runtime}")
    return SentenceTransformer._load_with_module_classes(name_or_path, classes, **kwargs)
