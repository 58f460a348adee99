"""Which prompt a model prepends to a query and to a document, read from its `prompts` the way sentence-transformers
reads them; torch-free, for the query path of an exported model (retrieval.encoder) as for a loaded one."""

from __future__ import annotations

from typing import Any

QUERY_PROMPT = "query"
# sentence-transformers' encode_document takes the first of these that the model's prompts have
DOCUMENT_PROMPTS = ("document", "passage", "corpus")


def query_prompt(model: Any) -> str | None:
    """The text `model.encode_query` prepends, or None: for what must add it by hand (the trainer's columns)."""
    return model.prompts.get(QUERY_PROMPT) or None


def document_prompt(model: Any) -> str | None:
    """The text `model.encode_document` prepends, or None, found the way it finds it."""
    name = next((name for name in DOCUMENT_PROMPTS if name in model.prompts), None)
    return (model.prompts[name] or None) if name else None
