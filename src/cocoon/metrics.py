"""The Prometheus metrics every role exposes at ``GET /metrics``, under the same names and labels, so one
dashboard (``deploy/grafana/cocoon.json``) reads a worker, a proxy and a client sidecar alike.

Each process runs one role and labels what it records with it (``role="worker"|"proxy"|"client"``). Money is
counted in nanoton; a float64 counter holds integers exactly up to 2**53 nanoton (about nine million TON).
"""

from __future__ import annotations

from typing import Literal

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

Role = Literal["worker", "proxy", "client"]
Flow = Literal["paid", "earned", "fee", "settled"]

REQUESTS = Counter(
    "cocoon_requests", "requests (jobs on a worker) ended, by how they ended", ["role", "model", "outcome"]
)
TOKENS = Counter("cocoon_tokens", "tokens in ended requests, by kind (prompt, completion)", ["role", "model", "kind"])
TTFT = Histogram(
    "cocoon_ttft_seconds",
    "time to the first token (worker: its engine; proxy: the first frame relayed; client: the first event)",
    ["role", "model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
FAILOVERS = Counter(
    "cocoon_failovers",
    "requests moved on (proxy: to another worker; client: to another proxy; worker: jobs resumed from another)",
    ["role"],
)
CANARY_FAILURES = Counter(
    "cocoon_canary_failures", "canaries that flagged a worker or got no checkable answer", ["role"]
)
MONEY = Counter(
    "cocoon_money_nanoton",
    "nanoton moved: paid (by clients), earned (workers' shares), fee (the proxy's), settled (claimed on chain)",
    ["role", "flow"],
)

METRIC_NAMES = (
    "cocoon_requests_total",
    "cocoon_tokens_total",
    "cocoon_ttft_seconds",
    "cocoon_failovers_total",
    "cocoon_canary_failures_total",
    "cocoon_money_nanoton_total",
)
"""What every role's ``/metrics`` shows, whatever traffic it has seen."""

# A worker reads no prices on the request path: what it earns is what its proxies voucher it, shown by
# `cocoon worker earnings` (and by the proxy's ``earned`` flow), so it records no money of its own.
FLOWS: dict[Role, tuple[Flow, ...]] = {
    "worker": (),
    "proxy": ("paid", "earned", "fee", "settled"),
    "client": ("paid",),
}


def start_role(role: Role) -> None:
    """Show ``role``'s counters at zero from the start: a scrape sees every series before the first event, and
    ``rate()`` has a first point to start from."""
    FAILOVERS.labels(role)
    CANARY_FAILURES.labels(role)
    for flow in FLOWS[role]:
        MONEY.labels(role, flow)


def record_request(
    role: Role,
    model: str,
    outcome: str,
    *,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    ttft_s: float | None = None,
) -> None:
    """One request ended as ``outcome`` (``ok``, ``cancelled``, or an error code) with these tokens."""
    REQUESTS.labels(role, model, outcome).inc()
    if prompt_tokens:
        TOKENS.labels(role, model, "prompt").inc(prompt_tokens)
    if completion_tokens:
        TOKENS.labels(role, model, "completion").inc(completion_tokens)
    if ttft_s is not None:
        TTFT.labels(role, model).observe(ttft_s)


def record_money(role: Role, flow: Flow, nanoton: int) -> None:
    """``nanoton`` moved as ``flow``; nothing for zero (and a negative amount is a bug, refused)."""
    if nanoton < 0:
        raise ValueError(f"a money counter only grows: {flow} of {nanoton} nanoton")
    if nanoton:
        MONEY.labels(role, flow).inc(nanoton)


async def metrics(request: Request) -> Response:
    """``GET /metrics``: this process's metrics in Prometheus's text format."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def metrics_route() -> Route:
    """The ``/metrics`` route, for any role's Starlette app."""
    return Route("/metrics", metrics)
