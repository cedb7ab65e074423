"""What the upstream engine asks an OpenAI-compatible server: the app's own request, changed only where it must be.

The sealed payload carries the app's validated OpenAI request (``GenerationRequest.openai``); it goes upstream
field for field, so whatever the server implements (vLLM's tools, response formats, log-probabilities, seeds, ...)
is honoured there and nothing is lost on the way. The engine changes only what is its to decide: the model name,
streaming with usage, the remaining token budget, one choice, and a mid-stream resume. Requests without it
(canaries, the SDK's own jobs) are written out in the same shape from the parsed fields.
"""

from __future__ import annotations

from typing import Any

from cocoon.engines.base import ChatMessage, GenerationRequest, OutputFormat
from cocoon.errors import BadRequest
from cocoon.protocol.openai import SamplingFields

# Fields the engine sets itself: the upstream's model name, a stream with usage, the budget left after what other
# workers already produced (``max_completion_tokens`` is the same budget under its newer name), and one choice.
_SET_HERE = frozenset({"model", "stream", "stream_options", "max_tokens", "max_completion_tokens", "n", "best_of"})
# Fields another part answers for: the client writes an echoed prompt back itself (the worker returns only what
# it generated), ``suffix`` is refused unless empty, and cocoon's routing extras are the proxy's and client's.
_NOT_UPSTREAMS = frozenset({"echo", "suffix"}) | SamplingFields.routing_fields
_LEFT_OUT = _SET_HERE | _NOT_UPSTREAMS


def upstream_request(request: GenerationRequest, model: str, cache_salt: bool = False) -> tuple[str, dict[str, Any]]:
    """The path (``/chat/completions`` or ``/completions``) and JSON body that ask ``model`` upstream for
    ``request``, streamed with usage; with ``cache_salt``, the request's cache scope goes as vLLM's ``cache_salt``
    (its prefix cache is then reused only between requests of one salt).

    Every field of ``request.openai`` goes as the app sent it (messages with their tool calls and image parts,
    tools, ``response_format``, ``logprobs``, penalties, ``user``, ``metadata``, ...) except those in
    ``_SET_HERE`` and ``_NOT_UPSTREAMS``. Raises ``BadRequest`` for a token-id prompt with a continuation: the
    produced text cannot be appended to token ids without the upstream's tokenizer.
    """
    params = request.params
    app = dict(request.openai) if request.openai is not None else _written_out(request)
    body = {key: value for key, value in app.items() if key not in _LEFT_OUT}
    body |= {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": params.max_tokens,
    }
    if cache_salt and request.cache_scope:
        body["cache_salt"] = request.cache_scope
    # An app that left these out gets OpenAI's defaults (1.0), not the upstream's own (llama-cpp-python's 0.8,
    # vLLM's from the model's generation config), as on every other engine.
    for knob, value in (("temperature", params.temperature), ("top_p", params.top_p)):
        if body.get(knob) is None:
            body[knob] = value
    if request.prompt is not None:
        body["prompt"] = _prompt(request)  # the one prompt of this choice, as the worker read it
        return "/completions", body
    assert request.messages is not None
    messages = list(app["messages"]) if request.openai is not None else [_message(m) for m in request.messages]
    if request.continuation:
        # Resume a partial answer: vLLM (and SGLang) render the last assistant message without closing its turn
        # when asked with these two extra parameters; servers without them start a new turn.
        messages.append({"role": "assistant", "content": request.continuation})
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
    body["messages"] = messages
    return "/chat/completions", body


def _prompt(request: GenerationRequest) -> str | list[int]:
    """One prompt: text with the continuation after it, or token ids as vLLM reads a token array."""
    if request.prompt_ids is None:
        return (request.prompt or "") + request.continuation
    if request.continuation:
        raise BadRequest(
            "a prompt given as token ids cannot be resumed mid-answer on an upstream worker; send the request again",
            param="prompt",
        )
    return list(request.prompt_ids)


def _written_out(request: GenerationRequest) -> dict[str, Any]:
    """The OpenAI request a ``GenerationRequest`` without ``openai`` stands for; OpenAI's defaults are left out."""
    params = request.params
    body: dict[str, Any] = {}
    if params.stop:
        body["stop"] = list(params.stop)
    if params.seed is not None:
        body["seed"] = params.seed
    if params.frequency_penalty:
        body["frequency_penalty"] = params.frequency_penalty
    if params.presence_penalty:
        body["presence_penalty"] = params.presence_penalty
    if params.logit_bias:
        body["logit_bias"] = {str(token): bias for token, bias in params.logit_bias}
    if request.prompt is not None:
        if request.logprobs:
            body["logprobs"] = request.top_logprobs
        return body
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": dict(tool.parameters),
                    "strict": tool.strict,
                },
            }
            for tool in request.tools
        ]
        body["tool_choice"] = (
            {"type": "function", "function": {"name": request.tool_name}}
            if request.tool_choice == "function"
            else request.tool_choice
        )
        if not request.parallel_tool_calls:
            body["parallel_tool_calls"] = False
    if request.response_format.type != "text":
        body["response_format"] = _response_format(request.response_format)
    if request.logprobs:
        body |= {"logprobs": True, "top_logprobs": request.top_logprobs}
    return body


def _message(message: ChatMessage) -> dict[str, Any]:
    content: str | list[dict[str, Any]] = message.content
    if message.images:
        content = [{"type": "text", "text": message.content}] if message.content else []
        content += [{"type": "image_url", "image_url": {"url": url}} for url in message.images]
    out: dict[str, Any] = {"role": message.role, "content": content}
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def _response_format(fmt: OutputFormat) -> dict[str, Any]:
    if fmt.type == "json_object":
        return {"type": "json_object"}
    schema = {"name": fmt.name or "response", "schema": dict(fmt.schema or {}), "strict": fmt.strict}
    return {"type": "json_schema", "json_schema": schema}
