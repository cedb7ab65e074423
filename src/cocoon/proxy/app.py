"""The proxy's ASGI app: routes, lifespan and error handling; the handlers live beside it.

Routes: the client API (``jobs``), the worker socket (``workers_ws``), money (``money.routes``), the explorer's
pages and ``/v1/stats`` (``explorer``), ``/metrics`` and ``/healthz`` (``metrics``). Every ``CocoonError`` a
handler raises leaves as its OpenAI JSON body and status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from cocoon.config import ProxySettings
from cocoon.errors import CocoonError, NotFound
from cocoon.metrics import metrics_route, start_role
from cocoon.proxy import jobs, metrics, policy
from cocoon.proxy.canaries import CanarySender
from cocoon.proxy.explorer import ROUTES as EXPLORER_ROUTES
from cocoon.proxy.explorer import Timeline
from cocoon.proxy.money.paid import open_cashier
from cocoon.proxy.money.routes import ROUTES as MONEY_ROUTES
from cocoon.proxy.routing import reputation_store
from cocoon.proxy.state import ProxyState
from cocoon.proxy.workers_ws import worker_connect

log = logging.getLogger("cocoon.proxy")

ROUTES = [
    Route("/v1/directory", jobs.directory),
    Route("/v1/models", jobs.models),
    Route("/v1/jobs", jobs.jobs, methods=["POST"]),
    metrics_route(),
    Route("/healthz", metrics.healthz),
    Route("/readyz", metrics.readyz),
    *MONEY_ROUTES,
    *EXPLORER_ROUTES,
    WebSocketRoute("/v1/worker/connect", worker_connect),
]


def create_app(settings: ProxySettings) -> Starlette:
    """A proxy for ``settings``; its state is at ``app.state.proxy``, started and stopped by the lifespan."""
    handlers = {CocoonError: cocoon_error, 404: not_found, 405: not_found}
    app = Starlette(routes=ROUTES, lifespan=lifespan, exception_handlers=handlers)
    app.state.proxy = ProxyState(settings)
    app.state.canaries = CanarySender(app.state.proxy)
    app.state.timeline = Timeline(app.state.proxy.store)
    return app


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    state: ProxyState = app.state.proxy
    await state.store.start()
    await reputation_store.load(state.store, state.routing.reputation)
    saver = asyncio.create_task(reputation_store.save_forever(state.store, state.routing.reputation))
    state.cashier = await open_cashier(state.settings, state.key, state.store)
    state.policy_source = await policy.open_policy(state)
    source = state.policy_source
    refresher = asyncio.create_task(source.keep_fresh(lambda p: policy.apply_policy(state, p))) if source else None
    metrics.count_workers(state.directory)
    start_role("proxy")
    sweeper = asyncio.create_task(state.liveness.run_forever())
    canaries: CanarySender = app.state.canaries
    canary_loop = asyncio.create_task(canaries.run_forever())
    timeline: Timeline = app.state.timeline
    stats_writer = asyncio.create_task(timeline.run_forever())
    log.info("proxy up proxy_id=%s", state.proxy_id)
    try:
        yield
    finally:
        sweeper.cancel()
        canary_loop.cancel()
        saver.cancel()
        stats_writer.cancel()
        if refresher is not None:
            refresher.cancel()
        if source is not None:
            await source.aclose()
        await reputation_store.save(state.store, state.routing.reputation)
        await timeline.flush()
        await state.cashier.close()
        await state.store.close()


async def cocoon_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CocoonError)  # registered for CocoonError only
    return JSONResponse(exc.to_openai(), status_code=exc.status)


async def not_found(request: Request, exc: Exception) -> Response:
    """An unknown route (404) or method (405), in the OpenAI shape of ``NotFound``."""
    error = NotFound(f"{request.method} {request.url.path} is not an endpoint of this proxy")
    return JSONResponse(error.to_openai(), status_code=getattr(exc, "status_code", 404))
