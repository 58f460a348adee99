"""Load a base or fine-tuned model the same way in every stage, with its prompts.

- a sentence-transformers model (has `modules.json`) loads as it is: its pooling and prompts are kept;
- a plain Hugging Face checkpoint becomes Transformer + Pooling(cls) + Normalize, bge's own recipe;
- a Hub id that cannot be reached fails in one line that says what to pass instead;
- a reranker (CrossEncoder) passed where an embedding model belongs, or the reverse, fails in one line naming
  the kind it is;
- `backend` other than torch runs a file `just export` wrote into the folder (st_poetry.core.backends).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)
from safetensors import SafetensorError
from sentence_transformers import CrossEncoder, SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

from st_poetry.core.backends import exported_sentence_transformer, exported_transformer
from st_poetry.core.config import parse_backend
from st_poetry.core.errors import UserError
from st_poetry.core.log import get_logger, get_verbosity, sync_libraries
from st_poetry.core.prompts import set_query_instruction

sync_libraries()  # sentence-transformers and transformers are imported now: give them -q/-v
# The Hub client warns at every retry of a host it cannot reach; load_model reports that failure in one line (-v
# shows the retries).
if get_verbosity() > logging.DEBUG:
    logging.getLogger("huggingface_hub.utils._http").setLevel(logging.ERROR)
logger = get_logger(__name__)

# Checkpoints may pad their embedding matrix (to a multiple of 64, say); a tokenizer under half of it is broken.
MIN_VOCABULARY_SHARE = 0.5


BI_ENCODER = "SentenceTransformer"
CROSS_ENCODER = "CrossEncoder"
LOAD_ERRORS = (OSError, ValueError, RuntimeError, EOFError, SafetensorError)  # e.g. truncated weights


def _model_file(name_or_path: str, filename: str, flag: str) -> Path | None:
    """`filename` of a local model folder or a Hub model, None when it has none.

    Raises a UserError when the model cannot be found or reached; `flag` is the option that takes a folder instead.
    """
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        if not (local / "modules.json").is_file() and not (local / "config.json").is_file():
            raise UserError(f"{local} is not a model folder (no modules.json or config.json)")
        return local / filename if (local / filename).is_file() else None
    # A path that cannot be a Hub id, or whose first folder exists here (models/nope), was meant as a folder.
    meant_as_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1 or local.parent.is_dir()
    if local.exists() or meant_as_path:
        raise UserError(f"model folder not found: {name_or_path}")
    try:
        return Path(hf_hub_download(name_or_path, filename))
    except LocalEntryNotFoundError:
        raise UserError(
            f"{name_or_path!r} is not a local folder, and as a Hugging Face Hub id it cannot be downloaded: the Hub "
            f"is out of reach and the model is not cached; pass a local model folder instead: {flag} PATH"
        ) from None
    except (RepositoryNotFoundError, HFValidationError):
        raise UserError(
            f"no such folder {name_or_path}, and no model {name_or_path!r} on the Hugging Face Hub"
        ) from None
    except EntryNotFoundError:
        return None


def model_kind(name_or_path: str, flag: str = "--model") -> str | None:
    """BI_ENCODER or CROSS_ENCODER as sentence-transformers saved it, or None for a plain Hugging Face checkpoint.

    A checkpoint without modules.json whose architecture is a sequence classifier (how rerankers such as
    bge-reranker-base ship) is a cross-encoder. `flag` names the option of the offline error's advice.
    """

    def read(filename: str) -> dict:
        path = _model_file(name_or_path, filename, flag)
        try:
            return json.loads(path.read_text(encoding="utf-8")) if path else {}
        except (ValueError, UnicodeDecodeError) as error:
            raise UserError(f"cannot load model {name_or_path!r}: {filename} is not valid JSON ({error})") from None

    if _model_file(name_or_path, "modules.json", flag):
        return read("config_sentence_transformers.json").get("model_type", BI_ENCODER)  # older ones do not say
    architectures = read("config.json").get("architectures") or []
    return CROSS_ENCODER if any(name.endswith("ForSequenceClassification") for name in architectures) else None


def _check_tokenizer(model: SentenceTransformer | CrossEncoder, name: str) -> None:
    """A model folder without its tokenizer files still loads, with a handful of special tokens, and then encodes
    every text to the same vector: refuse a tokenizer much smaller than the embedding matrix it indexes."""
    auto_model = getattr(model[0], "auto_model", None)
    tokenizer = getattr(model[0], "tokenizer", None)
    if auto_model is None or tokenizer is None:  # e.g. a static embedding model
        return
    embeddings = getattr(auto_model, "get_input_embeddings", None)  # an exported graph (backends.RuntimeModel) has none
    rows = embeddings().num_embeddings if embeddings else auto_model.config.vocab_size
    if len(tokenizer) < MIN_VOCABULARY_SHARE * rows:
        raise UserError(
            f"{name}: its tokenizer has {len(tokenizer):,} tokens for {rows:,} embedding rows, so it would encode "
            "every text alike: the tokenizer files (tokenizer.json, vocab.txt, ...) are missing or not this model's"
        )


def load_model(
    name_or_path: str,
    *,
    max_seq_length: int | None = None,
    query_instruction: str | None = None,
    replace_query_prompt: bool = False,
    backend: str = "torch",
) -> SentenceTransformer:
    """Load `name_or_path` for encoding or training.

    `query_instruction` becomes the model's "query" prompt. Training sets it once (`replace_query_prompt`):
    the saved model records it in its prompts, and every later stage finds it there. A stage that only
    encodes refuses an instruction that contradicts the prompt a model records, since its queries would then
    be encoded unlike the ones the model was trained or published with. `backend` is a `--backend` value
    (config.BACKENDS): torch, or an exported ONNX/OpenVINO file in the model folder.
    """
    runtime, file = parse_backend(backend)
    kind = model_kind(name_or_path)
    if kind == CROSS_ENCODER:
        raise UserError(f"{name_or_path} is a reranker (cross-encoder), not an embedding model: use it as --reranker")
    logger.debug(f"loading {name_or_path} ({kind or 'a plain checkpoint'}) with --backend {backend}")
    try:
        if kind == BI_ENCODER:
            if runtime == "torch":
                model = SentenceTransformer(name_or_path)
            else:
                model = exported_sentence_transformer(name_or_path, runtime, file)
        else:
            if runtime == "torch":
                transformer = Transformer(name_or_path)
            else:
                transformer = exported_transformer(name_or_path, runtime, file)
            pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="cls")
            model = SentenceTransformer(modules=[transformer, pooling, Normalize()])
    except LOAD_ERRORS as error:
        raise UserError(f"cannot load model {name_or_path!r}: {str(error).splitlines()[0]}") from None
    _check_tokenizer(model, name_or_path)
    if max_seq_length is not None and model.max_seq_length != math.inf:  # a static embedding has no token limit
        model.max_seq_length = max_seq_length
    set_query_instruction(model, query_instruction, name_or_path, replace=replace_query_prompt)
    return model


def load_reranker(name_or_path: str, *, max_seq_length: int | None = None, base: bool = False) -> CrossEncoder:
    """Load a trained reranker (evaluate, search), or with `base` any encoder to train one from.

    A base that is not a reranker yet (a bi-encoder, a plain checkpoint) keeps its encoder and gets a new
    one-score head. Only a reranker's trained head gives scores that mean anything, so without `base` the
    other kinds are refused, saying which kind they are.
    """
    kind = model_kind(name_or_path, "--model" if base else "--reranker")
    if kind != CROSS_ENCODER and not base:
        what = (
            "an embedding model (bi-encoder), not a reranker: pass it as --model, or train a reranker from it"
            if kind
            else "a plain checkpoint with no trained ranking head, not a reranker: train one from it"
        )
        raise UserError(f"{name_or_path} is {what} with `just train-reranker --model PATH`")
    logger.debug(f"loading {name_or_path} ({kind or 'a plain checkpoint'}) as a reranker")
    try:
        model = CrossEncoder(name_or_path, num_labels=None if kind == CROSS_ENCODER else 1)
    except LOAD_ERRORS as error:
        raise UserError(f"cannot load reranker {name_or_path!r}: {str(error).splitlines()[0]}") from None
    _check_tokenizer(model, name_or_path)
    if model.num_labels != 1:
        raise UserError(f"{name_or_path} is a {model.num_labels}-class classifier, not a reranker (one score)")
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    return model
