"""What the proxy tells operators: prometheus metrics at ``GET /metrics`` (the shared ones of ``cocoon.metrics``,
labelled ``role="proxy"``, and the proxy's own workers gauge), liveness at ``GET /healthz`` (the
process answers) and readiness at ``GET /readyz`` (its books answer and at least one attested worker is connected:
a load balancer in front of replicas sends clients only to one that can serve them).

The counters are process-wide (one proxy per process); ``count_workers`` points the workers gauge at a directory.
"""

from __future__ import annotations

import asyncio

from prometheus_client import Gauge
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import JSONResponse

from cocoon import __version__
from cocoon.proxy.routing.directory import Directory

WORKERS = Gauge("cocoon_proxy_workers", "attested workers connected")


def count_workers(directory: Directory) -> None:
    """Read the workers gauge from ``directory`` at every scrape (joins, leaves and sweeps all move it)."""
    WORKERS.set_function(lambda: len(directory.workers))


async def healthz(request: Request) -> JSONResponse:
    state = request.app.state.proxy
    return JSONResponse(
        {"ok": True, "proxy_id": state.proxy_id, "version": __version__, "workers": len(state.directory.workers)}
    )


READY_STORE_TIMEOUT_S = 2.0


async def readyz(request: Request) -> JSONResponse:
    """200 when the store answers a query within ``READY_STORE_TIMEOUT_S`` and a worker is connected, else 503
    with the reason."""
    state = request.app.state.proxy
    workers = len(state.directory.workers)
    reason = ""
    try:
        async with asyncio.timeout(READY_STORE_TIMEOUT_S):
            async with state.store.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
    except (TimeoutError, OSError, SQLAlchemyError) as exc:  # the database is down: "not ready", said in words
        reason = f"the store does not answer: {type(exc).__name__}: {str(exc)[:200]}"
    if not reason and workers == 0:
        reason = "no attested worker is connected yet"
    body = {"ready": not reason, "proxy_id": state.proxy_id, "workers": workers}
    return JSONResponse(body | ({"reason": reason} if reason else {}), status_code=503 if reason else 200)
