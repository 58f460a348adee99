"""Which prompt a model prepends to a query and to a document, read from its `prompts` the way sentence-transformers
reads them; torch-free, for the query path of an exported model (retrieval.encoder) as for a loaded one."""

from __future__ import annotations

from typing import Any

from st_poetry.core.errors import UserError
from st_poetry.core.log import get_logger

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


def set_query_instruction(model: Any, instruction: str | None, name: str, *, replace: bool = False) -> None:
    """Make `instruction` the model's query prompt. One contradicting the prompt the model records is refused
    (its queries would be encoded unlike those it was trained with) unless `replace` (training sets it once)."""
    if not instruction:
        return
    recorded = query_prompt(model)
    if recorded not in (None, instruction):
        if not replace:
            raise UserError(
                f"--query-instruction {instruction!r} contradicts the query prompt {recorded!r} that {name} records "
                "(set when it was trained): omit --query-instruction to use the model's own, or train with the "
                "instruction you want"
            )
        get_logger(__name__).info(f"note: the query prompt of {name} becomes {instruction!r} (was {recorded!r})")
    model.prompts[QUERY_PROMPT] = instruction
