"""The doctor's checks of the network a worker would serve: each proxy (a TCP connection, then its
``/healthz``), the payout wallet (and its balance when ``chain_url`` is set), and what each proxy's network
would pay for each model: the registry's prices x ``price_coefficient``, less the proxy's fee."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import httpx

from cocoon.chain import TON
from cocoon.chain.address import address_text, parse_address
from cocoon.chain.liteserver import chain_for
from cocoon.chain.pricing import COEFFICIENT_ONE, PER_MILLION, Prices, cost_of, split
from cocoon.chain.registry import Registry
from cocoon.config import WorkerSettings
from cocoon.worker.earnings import payout_wallet, proxy_http_url
from cocoon.worker.findings import HTTP_TIMEOUT_S, Finding, json_body, verify


async def check_proxies(settings: WorkerSettings, proxies: list[str]) -> list[Finding]:
    if not proxies:
        return [Finding("proxy", "fail", "no proxy to dial", "set proxies, or registry with chain_url")]
    return list(await asyncio.gather(*(_proxy_finding(url, settings) for url in proxies)))


async def _proxy_finding(url: str, settings: WorkerSettings) -> Finding:
    base = proxy_http_url(url)
    parts = urlsplit(base)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        async with asyncio.timeout(HTTP_TIMEOUT_S):
            _, writer = await asyncio.open_connection(parts.hostname, port)
        writer.close()
    except (OSError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        return Finding(
            "proxy",
            "fail",
            f"{url}: nothing listens at {parts.hostname}:{port} ({reason})",
            "check the proxy URL, the firewall's outbound rules, and that the proxy runs",
        )
    try:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, verify=verify(settings)) as http:
            response = await http.get(f"{base}/healthz")
    except httpx.HTTPError as exc:
        return Finding("proxy", "fail", f"{url}: {base}/healthz failed: {exc!r}", "check TLS (tls_ca_file) and the URL")
    if response.status_code != 200:
        status = response.status_code
        return Finding("proxy", "fail", f"{url}: {base}/healthz answered {status}", "is it a cocoon proxy?")
    body = json_body(response)
    return Finding(
        "proxy", "ok", f"{url}: answers (cocoon {body.get('version', '?')}, {body.get('workers', '?')} workers)"
    )


async def check_wallet(settings: WorkerSettings, _proxies: list[str]) -> list[Finding]:
    path = settings.wallet_file
    if not path.is_file():
        return [
            Finding(
                "wallet",
                "warn",
                f"no payout wallet at {path} yet",
                "the worker makes it on first start; back it up: it is where proxies pay you",
            )
        ]
    address = payout_wallet(settings).address  # the file exists: nothing is made
    shown = address_text(address, bounceable=False)
    if not settings.chain_url:
        return [
            Finding("wallet", "ok", f"payout wallet {shown} ({path})"),
            Finding("wallet", "warn", "no chain_url: balance not read", "set chain_url to read it and to claim"),
        ]
    async with chain_for(settings) as chain:
        balance = await chain.get_balance(address)
    return [Finding("wallet", "ok", f"payout wallet {shown}: {balance / TON:g} TON on chain")]


async def check_prices(settings: WorkerSettings, proxies: list[str]) -> list[Finding]:
    found: list[Finding] = []
    for url in proxies:
        base = proxy_http_url(url)
        try:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, verify=verify(settings)) as http:
                terms = await http.get(f"{base}/v1/payment")
                listed = await http.get(f"{base}/v1/models") if terms.status_code == 200 else None
        except httpx.HTTPError as exc:
            found.append(Finding("price", "warn", f"{base}: prices not read ({type(exc).__name__})"))
            continue
        if terms.status_code == 404:
            found.append(Finding("price", "warn", f"{base} is a free proxy: it relays jobs and pays nothing"))
            continue
        payment = json_body(terms)
        pricing = {str(m.get("id")): m.get("pricing") for m in json_body(listed).get("data", [])} if listed else {}
        for engine in settings.engines:
            found.append(await _price_finding(engine.model, base, payment, pricing, settings))
    return found


async def _price_finding(
    model: str, base: str, payment: dict[str, Any], pricing: dict[str, Any], settings: WorkerSettings
) -> Finding:
    prices: Prices | None = None
    if settings.chain_url and payment.get("registry"):
        async with chain_for(settings) as chain:
            entry = await Registry(chain, parse_address(str(payment["registry"]))).get_model(model)
        if entry is None:
            return Finding(
                "price",
                "fail",
                f"{model}: the registry prices no such model, so no request to it is paid",
                "serve a model the registry lists (`cocoon chain policy`), or ask its owner to add it",
            )
        prices = Prices(entry.price_prompt, entry.price_cached, entry.price_completion)
    elif isinstance(pricing.get(model), dict):
        table = pricing[model]
        prices = Prices(int(table["prompt"]), int(table["cached"]), int(table["completion"]))
    if prices is None:
        return Finding("price", "warn", f"{model}: prices unknown at {base}", "set chain_url to read the registry")
    fee = int(payment.get("proxy_fee_bps", 0))
    coefficient = settings.price_coefficient
    prompt = split(cost_of(PER_MILLION, 0, 0, prices, coefficient).total, fee)[0]
    completion = split(cost_of(0, 0, PER_MILLION, prices, coefficient).total, fee)[0]
    return Finding(
        "price",
        "ok",
        f"{model} at {base}: {completion} nanoton per million completion tokens, {prompt} per million prompt "
        f"tokens (price x{coefficient / COEFFICIENT_ONE:g}, after the proxy's {fee / 100:g}% fee)",
    )
