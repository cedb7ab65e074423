"""The explorer over HTTP: pages at ``/``, ``/workers``, ``/money`` and their JSON at ``GET /v1/stats`` (all of
it), ``/v1/stats/network``, ``/v1/stats/workers`` and ``/v1/stats/money``.

Handlers read ``request.app.state.proxy`` and ``request.app.state.timeline``; public, like ``/v1/directory``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from cocoon.proxy.explorer import facts, pages
from cocoon.proxy.explorer.timeline import Timeline
from cocoon.proxy.state import ProxyState

# The pages are our own HTML with no script; forbid any anyway, so an escaping slip could not run one.
HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'",
    "x-content-type-options": "nosniff",
}


def _sources(request: Request) -> tuple[ProxyState, Timeline]:
    return request.app.state.proxy, request.app.state.timeline


async def stats(request: Request) -> JSONResponse:
    return JSONResponse(await facts.all_stats(*_sources(request)))


async def network_stats(request: Request) -> JSONResponse:
    return JSONResponse(await facts.network_stats(*_sources(request)))


async def workers_stats(request: Request) -> JSONResponse:
    return JSONResponse(await facts.workers_stats(request.app.state.proxy))


async def money_stats(request: Request) -> JSONResponse:
    return JSONResponse(await facts.money_stats(request.app.state.proxy))


async def network_page(request: Request) -> HTMLResponse:
    return HTMLResponse(pages.network_page(await facts.network_stats(*_sources(request))), headers=HEADERS)


async def workers_page(request: Request) -> HTMLResponse:
    return HTMLResponse(pages.workers_page(await facts.workers_stats(request.app.state.proxy)), headers=HEADERS)


async def money_page(request: Request) -> HTMLResponse:
    state: ProxyState = request.app.state.proxy
    return HTMLResponse(pages.money_page(await facts.money_stats(state), state.proxy_id), headers=HEADERS)


ROUTES = [
    Route("/", network_page),
    Route("/workers", workers_page),
    Route("/money", money_page),
    Route("/v1/stats", stats),
    Route("/v1/stats/network", network_stats),
    Route("/v1/stats/workers", workers_stats),
    Route("/v1/stats/money", money_stats),
]
