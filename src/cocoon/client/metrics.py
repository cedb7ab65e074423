"""What the client sidecar tells operators: the shared Prometheus metrics of ``cocoon.metrics`` labelled
``role="client"`` at ``GET /metrics`` (``metrics_route``), and ``RequestCount``, which the SDK keeps for each
request: how it ended, its tokens, the time to its first event, the proxies it moved past.
"""

from __future__ import annotations

import time

from starlette.routing import Route

from cocoon.metrics import FAILOVERS, metrics_route, record_request, start_role
from cocoon.protocol.usage import TokenUsage


def client_metrics_route() -> Route:
    """The sidecar's ``/metrics`` route; its counters show at zero from the first scrape."""
    start_role("client")
    return metrics_route()


class RequestCount:
    """One request's metrics as the SDK streams it; ``ended`` records it once, whatever comes after."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.sent = time.monotonic()
        self.ttft_s: float | None = None
        self.done = False

    def saw(self, usage: TokenUsage | None) -> None:
        """An event reached the app; ``usage`` is the request's, on its last event (the ``Completion``)."""
        if self.ttft_s is None:
            self.ttft_s = time.monotonic() - self.sent
        if usage is not None:
            self.ended("ok", usage)

    def failed_over(self) -> None:
        """The request failed before its first event and goes to another proxy (or a fresh directory)."""
        FAILOVERS.labels("client").inc()

    def ended(self, outcome: str, usage: TokenUsage | None = None) -> None:
        if self.done:
            return
        self.done = True
        prompt, completion = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
        record_request(
            "client", self.model, outcome, prompt_tokens=prompt, completion_tokens=completion, ttft_s=self.ttft_s
        )
