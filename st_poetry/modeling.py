"""Load a base or fine-tuned model the same way in every stage, with its prompts.

- a sentence-transformers model (has `modules.json`) loads as it is: its pooling and prompts are kept;
- a plain Hugging Face checkpoint becomes Transformer + Pooling(cls) + Normalize, bge's own recipe;
- a Hub id that cannot be reached fails in one line that says what to pass instead;
- `backend` other than torch runs a file `just export` wrote into the folder (st_poetry.backends).
"""

from __future__ import annotations

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
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

from st_poetry.backends import exported_sentence_transformer, exported_transformer
from st_poetry.config import UserError, parse_backend

QUERY_PROMPT = "query"
# Checkpoints may pad their embedding matrix (to a multiple of 64, say); a tokenizer under half of it is broken.
MIN_VOCABULARY_SHARE = 0.5
# sentence-transformers' encode_document takes the first of these that the model's prompts have
DOCUMENT_PROMPTS = ("document", "passage", "corpus")


def _is_sentence_transformer(name_or_path: str) -> bool:
    """True when the model ships modules.json; raises a UserError when it cannot be found or reached."""
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        if not (local / "modules.json").is_file() and not (local / "config.json").is_file():
            raise UserError(f"{local} is not a model folder (no modules.json or config.json)")
        return (local / "modules.json").is_file()
    # A path that cannot be a Hub id, or whose first folder exists here (models/nope), was meant as a folder.
    meant_as_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1 or local.parent.is_dir()
    if local.exists() or meant_as_path:
        raise UserError(f"model folder not found: {name_or_path}")
    try:
        hf_hub_download(name_or_path, "modules.json")
    except LocalEntryNotFoundError:
        raise UserError(
            f"{name_or_path!r} is not a local folder, and as a Hugging Face Hub id it cannot be downloaded: the Hub "
            "is out of reach and the model is not cached; pass a local model folder instead: --model PATH"
        ) from None
    except (RepositoryNotFoundError, HFValidationError):
        raise UserError(
            f"no such folder {name_or_path}, and no model {name_or_path!r} on the Hugging Face Hub"
        ) from None
    except EntryNotFoundError:
        return False
    return True


def _check_tokenizer(model: SentenceTransformer, name: str) -> None:
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
    try:
        if _is_sentence_transformer(name_or_path):
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
    except UserError:
        raise
    except (OSError, ValueError, RuntimeError, EOFError, SafetensorError) as error:  # e.g. truncated weights
        raise UserError(f"cannot load model {name_or_path!r}: {str(error).splitlines()[0]}") from None
    _check_tokenizer(model, name_or_path)
    if max_seq_length is not None and model.max_seq_length != math.inf:  # a static embedding has no token limit
        model.max_seq_length = max_seq_length
    if query_instruction:
        recorded = query_prompt(model)
        if recorded not in (None, query_instruction):
            if not replace_query_prompt:
                raise UserError(
                    f"--query-instruction {query_instruction!r} contradicts the query prompt {recorded!r} that "
                    f"{name_or_path} records (set when it was trained): omit --query-instruction to use the "
                    "model's own, or train with the instruction you want"
                )
            print(f"note: the query prompt of {name_or_path} becomes {query_instruction!r} (was {recorded!r})")
        model.prompts[QUERY_PROMPT] = query_instruction
    return model


def query_prompt(model: SentenceTransformer) -> str | None:
    """The text `model.encode_query` prepends, or None: for what must add it by hand (the trainer's columns)."""
    return model.prompts.get(QUERY_PROMPT) or None


def document_prompt(model: SentenceTransformer) -> str | None:
    """The text `model.encode_document` prepends, or None, found the way it finds it."""
    name = next((name for name in DOCUMENT_PROMPTS if name in model.prompts), None)
    return (model.prompts[name] or None) if name else None
