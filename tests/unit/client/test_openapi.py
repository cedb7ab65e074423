"""The sidecar's OpenAPI document, and schemathesis fuzzing every operation in it: no input is a 500.

In-process: schemathesis reads ``GET /openapi.json`` from the app and calls it over ASGI, bounded and
derandomized (the same examples every run). Recorded (``fakes.py``): a proxy whose directory lists one
attested worker and whose jobs it answers, so a valid request goes all the way through sealing and back.
"""

from __future__ import annotations

from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from starlette.applications import Starlette

from cocoon.client import CocoonClient, create_gateway
from cocoon.config import ClientSettings
from tests.unit.client.fakes import MODEL, FakeWorker, answer_with_text, dev_policy, recorded_proxy

# A proxy or worker failing is the network's 502/503/504, not the sidecar's bug; any other 5xx is.
UPSTREAM_UNAVAILABLE = {502, 503, 504}
EXAMPLES_PER_OPERATION = 30


def fuzzed_sidecar() -> Starlette:
    proxy = httpx.AsyncClient(transport=recorded_proxy([FakeWorker()], answer_with_text("ok")), base_url="http://p")
    return create_gateway(ClientSettings(), client=CocoonClient("http://p", dev_policy(), http=proxy))


APP = fuzzed_sidecar()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
schema.config.generation.update(
    modes=["positive", "negative"], max_examples=EXAMPLES_PER_OPERATION, deterministic=True, database="none"
)


@schema.hook
def map_body(context: schemathesis.HookContext, body: Any) -> Any:
    """Any string model becomes the served one, so generated bodies reach sealing, the proxy and back instead of
    stopping at the model lookup; models of other types still meet validation."""
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        return body | {"model": MODEL}
    return body


async def test_the_document_covers_every_endpoint_with_its_request_and_errors() -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(APP), base_url="http://sidecar.test") as http:
        document = (await http.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == {
        "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/models",
        "/v1/models/{model}", "/healthz",
    }  # fmt: skip
    chat = document["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionRequest"
    }
    assert {"400", "413", "503"} <= set(chat["responses"])
    request = document["components"]["schemas"]["ChatCompletionRequest"]
    assert {"model", "messages", "max_tokens", "seed", "max_coefficient"} <= set(request["properties"])
    assert "ErrorResponse" in document["components"]["schemas"]


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, deadline=None,
          suppress_health_check=list(HealthCheck), database=None)  # fmt: skip
def test_no_generated_request_is_answered_with_a_server_error(case: Case) -> None:
    response = case.call()
    assert response.status_code < 500 or response.status_code in UPSTREAM_UNAVAILABLE, (
        f"{case.method} {case.path} answered {response.status_code}: {response.text[:500]}\n{case.as_curl_command()}"
    )
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
