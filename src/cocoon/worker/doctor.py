"""``cocoon worker doctor``: what this machine can serve and what it still lacks to earn, one finding per check.

Checks, each a small coroutine under its own timeout: the TEE (configfs-tsm and its provider), the GPUs and
their confidential-computing mode, memory against each model's size, each engine (an upstream's ``/models``,
a GGUF that loads) in ``machine_checks``; each proxy (TCP, then its ``/healthz``), the payout wallet (and its
balance on chain), and the price each proxy's network would pay in ``network_checks``. A check that fails,
times out or breaks becomes a ✗ finding of its own; it never hides the others. The worker can earn when no
finding is a failure (``can_earn``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import httpx

from cocoon.config import WorkerSettings
from cocoon.errors import CocoonError
from cocoon.worker.discovery import registry_worker_urls
from cocoon.worker.findings import Finding, can_earn
from cocoon.worker.machine_checks import check_engines, check_gpu, check_memory, check_tee
from cocoon.worker.network_checks import check_prices, check_proxies, check_wallet

__all__ = [
    "Finding",
    "can_earn",
    "check_engines",
    "check_gpu",
    "check_memory",
    "check_prices",
    "check_proxies",
    "check_tee",
    "check_wallet",
    "examine",
]

log = logging.getLogger("cocoon.worker.doctor")

Check = Callable[[WorkerSettings, list[str]], Awaitable[list[Finding]]]


async def examine(settings: WorkerSettings) -> list[Finding]:
    """Every check's findings, in a fixed order, the slow ones run at once."""
    proxies, listing = await _proxy_urls(settings)
    checks: list[tuple[str, float, Check]] = [
        ("tee", 10, check_tee),
        ("gpu", 30, check_gpu),
        ("memory", 300, check_memory),
        ("engine", 300, check_engines),
        ("proxy", 15, check_proxies),
        ("wallet", 20, check_wallet),
        ("price", 30, check_prices),
    ]
    results = await asyncio.gather(*(_guarded(name, t, check, settings, proxies) for name, t, check in checks))
    return [*listing, *(f for found in results for f in found)]


async def _guarded(
    name: str, timeout: float, check: Check, settings: WorkerSettings, proxies: list[str]
) -> list[Finding]:
    """``check``'s findings, or one ✗ saying how it broke: a check never takes the others down with it."""
    try:
        async with asyncio.timeout(timeout):
            return await check(settings, proxies)
    except TimeoutError:
        return [Finding(name, "fail", f"the check did not finish in {timeout:g}s", "run it again; see the log")]
    except CocoonError as exc:
        return [Finding(name, "fail", exc.message)]
    except Exception as exc:  # a bug or a surprise of this machine: shown as the check's failure, and logged
        log.exception("doctor check %s broke", name)
        return [Finding(name, "fail", f"the check broke: {type(exc).__name__}: {exc}", "report it with the log")]


async def _proxy_urls(settings: WorkerSettings) -> tuple[list[str], list[Finding]]:
    """The proxy sockets this worker would dial (the registry's when it has one), and a finding if that failed."""
    if not (settings.registry and settings.chain_url):
        return list(settings.proxies), []
    try:
        async with asyncio.timeout(20):
            return await registry_worker_urls(settings, settings.registry), []
    except (CocoonError, OSError, httpx.HTTPError, TimeoutError) as exc:
        reason = exc.message if isinstance(exc, CocoonError) else f"{type(exc).__name__}: {exc}"
        fix = "check chain_url and registry, or list proxies explicitly"
        return [], [Finding("proxy", "fail", f"cannot read the registry's proxies: {reason}", fix)]
