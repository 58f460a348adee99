"""Encode with a model's exported graph and no torch: the query path of an index built with `--backend onnx...` or
`openvino...`.

sentence-transformers needs torch even to run an exported graph, and importing the two is most of the wait before
a fresh `just search` answers and most of a server worker's own memory. For a model folder of the usual shape
(a Transformer, Pooling by CLS or mean, maybe Normalize) the steps are few: the prompt prepended, the fast
tokenizer's own file (truncated to the token limit, padded to the longest), the graph, the
pooling, the normalization. `open_encoder` takes this path when it can and loads the sentence-transformers model
(core.modeling.load_model) otherwise; tests/test_encoder.py holds the two to the same embeddings.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from st_poetry.core.config import parse_backend
from st_poetry.core.errors import UserError
from st_poetry.core.log import get_logger
from st_poetry.core.prompts import document_prompt, query_prompt, set_query_instruction
from st_poetry.core.runtimes import open_graph

logger = get_logger(__name__)

# modules.json types, by class name, that this path reproduces, in this order (Normalize optional)
SHAPE = ("Transformer", "Pooling", "Normalize")
POOLING_MODES = ("cls", "mean")
# Queries are padded to a multiple of this many tokens: OpenVINO keeps memory for every input shape it has run,
# and a server meeting every query length would grow with them (docs/BENCHMARKS.md, "The whole collection with
# pq4-sq8"); an index build's full batches of sorted lines meet few shapes and are not padded.
QUERY_PAD_MULTIPLE = 16


def open_encoder(
    name_or_path: str,
    *,
    max_seq_length: int,
    query_instruction: str | None = None,
    backend: str = "torch",
    throughput: bool = False,
) -> Any:
    """What encodes queries and documents for an index: an ExportedEncoder when the backend is an exported file
    of a model folder whose shape it reproduces, else the sentence-transformers model, loaded as load_model does.
    `throughput`: opened to encode a corpus, many batches in flight, rather than one query at a time."""
    runtime, file = parse_backend(backend)
    pooling = _pooling_mode(Path(name_or_path)) if runtime != "torch" else None
    if pooling is None or (Path(name_or_path) / file).suffix not in (".onnx", ".xml"):
        from st_poetry.core.modeling import load_model  # torch and sentence-transformers: only on this path

        return load_model(
            name_or_path, max_seq_length=max_seq_length, query_instruction=query_instruction, backend=backend
        )
    encoder = ExportedEncoder(Path(name_or_path), runtime, file, pooling, max_seq_length, throughput)
    set_query_instruction(encoder, query_instruction, name_or_path)
    return encoder


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _pooling_mode(folder: Path) -> str | None:
    """ "cls" or "mean" when `folder` is a sentence-transformers model of SHAPE whose pooling this path reproduces."""
    modules = _read_json(folder / "modules.json")
    if not isinstance(modules, list) or not (folder / "tokenizer.json").is_file():
        return None
    names = tuple(str(module.get("type", "")).rsplit(".", 1)[-1] for module in modules)
    if names not in (SHAPE, SHAPE[:2]) or modules[0].get("path") != "":
        return None
    pooling = _read_json(folder / modules[1]["path"] / "config.json") or {}
    transformer = _read_json(folder / "sentence_bert_config.json") or {}
    if not pooling.get("include_prompt", True) or transformer.get("do_lower_case"):
        return None
    mode = pooling.get("pooling_mode") or next(  # older files: a flag per mode
        (mode for mode in POOLING_MODES if pooling.get(f"pooling_mode_{mode}_token{'s' * (mode == 'mean')}")), None
    )
    flags = [key for key, value in pooling.items() if key.startswith("pooling_mode_") and value is True]
    return mode if mode in POOLING_MODES and len(flags) <= 1 else None


class ExportedEncoder:
    """A sentence-transformers model folder's exported graph, encoding as the library does with that model."""

    def __init__(
        self, folder: Path, runtime: str, file: str, pooling: str, max_seq_length: int, throughput: bool = False
    ) -> None:
        if not (folder / file).is_file():
            raise UserError(
                f"{folder} has no {file}: export it first with `just export --model {folder} --backend {runtime}`"
            )
        self.folder, self.pooling = folder, pooling
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        pad_token = (_read_json(folder / "tokenizer_config.json") or {}).get("pad_token")
        pad_id = self.tokenizer.token_to_id(pad_token) if isinstance(pad_token, str) else None
        self.tokenizer.enable_truncation(max_length=max_seq_length)
        self.tokenizer.enable_padding(
            pad_id=pad_id or 0,
            pad_token=pad_token if pad_id is not None else "[PAD]",
            pad_to_multiple_of=None if throughput else QUERY_PAD_MULTIPLE,
        )
        settings = _read_json(folder / "config_sentence_transformers.json") or {}
        self.prompts: dict[str, str] = dict(settings.get("prompts") or {})
        self.max_seq_length = max_seq_length
        self.graph = open_graph(runtime, folder / file, throughput)
        self._dimension: int | None = None
        logger.debug(f"encoding with {folder / file} ({runtime}, {pooling} pooling) without torch")

    def encode(self, texts: Sequence[str], prompt: str | None = None, batch_size: int = 32, **_: Any) -> np.ndarray:
        """Normalized float32 embeddings, one row per text (`normalize_embeddings` and the like are implied)."""
        if not texts:
            return np.empty((0, self.get_embedding_dimension()), np.float32)
        # longest first, as sentence-transformers does: a batch of similar lengths pads little
        order = np.argsort([-len(text) for text in texts], kind="stable")
        ordered = [f"{prompt or ''}{texts[i]}" for i in order]
        masks: list[np.ndarray] = []
        pooled: dict[int, np.ndarray] = {}

        def feeds() -> Iterator[dict[str, np.ndarray]]:
            for start in range(0, len(ordered), batch_size):
                feed, mask = self._features(ordered[start : start + batch_size])
                masks.append(mask)
                yield feed

        self.graph.map(feeds(), lambda i, hidden: pooled.__setitem__(i, self._pool(hidden, masks[i])))
        embeddings = np.empty((len(texts), pooled[0].shape[1]), np.float32)
        embeddings[order] = np.concatenate([pooled[i] for i in range(len(pooled))])
        return embeddings

    def encode_query(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        return self.encode(texts, query_prompt(self), **kwargs)

    def encode_document(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        return self.encode(texts, document_prompt(self), **kwargs)

    def get_embedding_dimension(self) -> int:
        if self._dimension is None:
            self._dimension = int(self.encode(["."]).shape[1])
        return self._dimension

    def _features(self, texts: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The graph's inputs for a batch (token ids padded to the batch's longest, for queries to a multiple of
        QUERY_PAD_MULTIPLE) and its attention mask."""
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([encoding.ids for encoding in encodings], dtype=np.int64)
        mask = np.array([encoding.attention_mask for encoding in encodings], dtype=np.int64)
        given = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return {name: given[name] for name in self.graph.input_names}, mask

    def _pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        hidden = np.asarray(hidden, dtype=np.float32)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
