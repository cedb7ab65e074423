"""What the proxy tells operators: prometheus counters at ``GET /metrics``, liveness at ``GET /healthz``.

The counters are process-wide (one proxy per process); ``count_workers`` points the workers gauge at a directory.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cocoon import __version__
from cocoon.proxy.routing.directory import Directory

JOBS = Counter("cocoon_proxy_jobs_total", "jobs relayed", ["model", "outcome"])
WORKERS = Gauge("cocoon_proxy_workers", "attested workers connected")
FAILOVERS = Counter("cocoon_proxy_failovers_total", "jobs moved to another worker")


def count_workers(directory: Directory) -> None:
    """Read the workers gauge from ``directory`` at every scrape (joins, leaves and sweeps all move it)."""
    WORKERS.set_function(lambda: len(directory.workers))


async def metrics(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def healthz(request: Request) -> JSONResponse:
    state = request.app.state.proxy
    return JSONResponse(
        {"ok": True, "proxy_id": state.proxy_id, "version": __version__, "workers": len(state.directory.workers)}
    )
