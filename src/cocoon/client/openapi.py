"""The sidecar's OpenAPI 3.1 document, generated from the pydantic models of ``cocoon.protocol.openai`` and
``cocoon.protocol.openai_responses``.

Served at ``GET /openapi.json``: for API explorers and client generators, and for the schema-driven fuzz test
that holds every endpoint to answering hostile input with a 4xx, never a 500.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from cocoon.protocol.openai import (
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
    TextCompletion,
)
from cocoon.protocol.openai_responses import Response, ResponsesRequest

# What each status means on this API; every error body is an ``ErrorResponse``.
ERRORS = {
    "400": "the request is malformed or asks for something unsupported; `param` names the field",
    "401": "missing or wrong API key",
    "403": "a web origin not in the sidecar's allowed_origins",
    "404": "no such model or endpoint",
    "408": "the body arrived too slowly",
    "413": "the body or the prompt is over the sidecar's limit",
    "415": "the body is not application/json",
    "402": "the channel cannot pay for this request",
    "502": "the proxy or a worker failed, or a worker's attestation or receipt did not verify",
    "503": "no worker can take the request now",
    "504": "the proxy or worker did not answer in time",
}
BODY_ERRORS = ("400", "401", "402", "403", "404", "408", "413", "415", "502", "503", "504")
READ_ERRORS = ("404", "502", "503", "504")


def openapi_document(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the sidecar's API, at ``version`` (the package's)."""
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (ChatCompletionRequest, "validation"),
        (CompletionRequest, "validation"),
        (EmbeddingRequest, "validation"),
        (ResponsesRequest, "validation"),
        (ChatCompletion, "serialization"),
        (TextCompletion, "serialization"),
        (EmbeddingList, "serialization"),
        (Response, "serialization"),
        (ModelList, "serialization"),
        (ModelCard, "serialization"),
        (ErrorResponse, "serialization"),
    ]
    refs, defs = models_json_schema(models, ref_template="#/components/schemas/{model}")
    ref = {model: schema for (model, _mode), schema in refs.items()}
    chunks = "server-sent events (`data: {chunk}` … `data: [DONE]`) when the request sets `stream: true`"
    events = (
        "server-sent events (`event: response.created` … `event: response.completed`, each with its `data` and "
        "`sequence_number`) when the request sets `stream: true`"
    )

    def post(summary: str, request: type[BaseModel], answer: type[BaseModel], stream: str | None) -> dict[str, Any]:
        content: dict[str, Any] = {"application/json": {"schema": ref[answer]}}
        if stream:
            content["text/event-stream"] = {"schema": {"type": "string", "description": stream}}
        return {
            "post": {
                "summary": summary,
                "requestBody": {"required": True, "content": {"application/json": {"schema": ref[request]}}},
                "responses": {"200": {"description": "the answer", "content": content}, **errors(BODY_ERRORS)},
            }
        }

    def get(summary: str, answer: dict[str, Any], **extra: Any) -> dict[str, Any]:
        ok = {"description": "the answer", "content": {"application/json": {"schema": answer}}}
        return {"get": {"summary": summary, **extra, "responses": {"200": ok, **errors(READ_ERRORS)}}}

    def errors(statuses: tuple[str, ...]) -> dict[str, Any]:
        body = {"application/json": {"schema": ref[ErrorResponse]}}
        return {status: {"description": ERRORS[status], "content": body} for status in statuses}

    model_param = {"name": "model", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cocoon client sidecar",
            "version": version,
            "description": "OpenAI-compatible API whose requests are sealed to attested workers.",
        },
        "paths": {
            "/v1/chat/completions": post(
                "Create a chat completion", ChatCompletionRequest, ChatCompletion, stream=chunks
            ),
            "/v1/completions": post("Create a text completion", CompletionRequest, TextCompletion, stream=chunks),
            "/v1/embeddings": post("Create embeddings", EmbeddingRequest, EmbeddingList, stream=None),
            "/v1/responses": post(
                "Create a model response (stateless: send the whole conversation as input)",
                ResponsesRequest,
                Response,
                stream=events,
            ),
            "/v1/models": get("List the models attested workers serve", ref[ModelList]),
            "/v1/models/{model}": get("Retrieve a model", ref[ModelCard], parameters=[model_param]),
            "/healthz": get(
                "Whether the sidecar is up",
                {"type": "object", "properties": {"ok": {"const": True}}, "required": ["ok"]},
            ),
        },
        "components": {"schemas": defs.get("$defs", {})},
    }
