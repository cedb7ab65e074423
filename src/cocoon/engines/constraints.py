"""How a request constrains the embedded engine's answer: the grammar it is held to (``response_format``, tools and
``tool_choice``), and what a text-only llama.cpp model refuses rather than ignores (images, reasoning, verbosity).
"""

from __future__ import annotations

from cocoon.engines.base import GenerationRequest
from cocoon.engines.grammar import Grammar, schema_rule
from cocoon.engines.tool_calls import calls_rule, text_or_calls
from cocoon.errors import BadRequest


def refuse_unsupported(request: GenerationRequest, model: str) -> None:
    """``BadRequest`` naming the first field of ``request`` this engine cannot honour."""
    if request.messages is not None and any(m.images for m in request.messages):
        raise BadRequest(f"model {model!r} takes no images; send the messages as text only", param="messages")
    openai = request.openai or {}
    effort = openai.get("reasoning_effort")
    if effort not in (None, "none"):
        raise BadRequest(
            f"model {model!r} does not reason before answering; leave reasoning_effort out or send 'none'",
            param="reasoning_effort",
        )
    if openai.get("verbosity") is not None:
        raise BadRequest(f"model {model!r} cannot be told a verbosity; leave verbosity out", param="verbosity")


def answer_grammar(request: GenerationRequest) -> str | None:
    """The GBNF the answer is held to, None for free text.

    Tools offered with ``tool_choice`` "required" or a named function: calls only. "auto": text that may turn
    into calls at ``<tool_call>`` (``text_or_calls``), or, with a JSON ``response_format``, either calls or
    that JSON (it cannot start like a call). Without tools: the ``response_format``'s JSON. Raises
    ``BadRequest`` (param "tools" or "response_format") for a schema the grammar cannot enforce.
    """
    grammar = Grammar()
    if request.wants_tools and request.tool_choice in ("required", "function"):
        return grammar.text(calls_rule(grammar, request))
    form = request.response_format
    content: str | None = None
    if form.type == "json_object":
        content = grammar.primitive("object")
    elif form.type == "json_schema":
        where = "response_format.json_schema.schema"
        content = schema_rule(grammar, form.schema or {}, strict=form.strict, param="response_format", where=where)
    if not request.wants_tools:
        return grammar.text(content) if content is not None else None
    if content is not None:
        return grammar.text(f"{calls_rule(grammar, request)} | {content}")
    return grammar.text(text_or_calls(grammar, request))
