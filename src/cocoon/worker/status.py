"""What a worker tells its operator over HTTP (off unless ``status_port`` is set; loopback by default):
liveness at ``GET /healthz``, readiness at ``GET /readyz`` (its engines are loaded and at least one proxy has
accepted its registration), for a supervisor or an orchestrator's probes, and the shared Prometheus metrics at
``GET /metrics`` (``cocoon.metrics``, ``role="worker"``). The worker needs no inbound port for
its work; this one is for the machine's own monitoring.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cocoon import __version__
from cocoon.metrics import metrics_route, start_role
from cocoon.worker.link import ProxyLink


def status_app(worker_id: str, links: Callable[[], list[ProxyLink]], models: list[str]) -> Starlette:
    """The status endpoints of the worker ``worker_id``, reading its current proxy ``links``."""

    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "worker_id": worker_id, "version": __version__})

    async def readyz(_: Request) -> JSONResponse:
        current = links()
        registered = [link.url for link in current if link.connected.is_set()]
        body = {"ready": bool(registered), "worker_id": worker_id, "models": models, "proxies": registered}
        if not registered:
            body["reason"] = f"none of its {len(current)} proxies has accepted its registration yet"
        return JSONResponse(body, status_code=200 if registered else 503)

    start_role("worker")
    return Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz), metrics_route()])


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: SIGTERM is the worker's to handle (it drains its jobs)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_status(app: Starlette, host: str, port: int) -> None:
    """Serve ``app`` in this event loop until cancelled."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
    await _Server(config).serve()
