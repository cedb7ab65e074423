"""The client's proxy pool: health ranks the proxies, a registry re-read changes which ones it holds without
losing what it knows of those it keeps, and no more of them than the cap; what a dropped proxy held is closed."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from cocoon.attestation import AttestationPolicy, AttestationVerifier
from cocoon.chain.toncenter import ToncenterClient
from cocoon.client.proxies import ProxyPool, within_cap
from cocoon.client.wallet import ChannelPayer
from cocoon.crypto.keys import SigningKey
from cocoon.errors import ConfigError


def pool(*urls: str, timeout: float = 30) -> ProxyPool:
    return ProxyPool(list(urls), AttestationVerifier(AttestationPolicy()), timeout=timeout)


def test_a_proxy_that_could_not_be_reached_ranks_last_while_it_rests() -> None:
    proxies = pool("http://a", "http://b")
    a, b = proxies.proxies
    a.health.succeeded(0.010)
    b.health.succeeded(0.005)
    assert [p.url for p in proxies.ranked(now=100)] == ["http://b", "http://a"]
    b.health.failed(100, unreachable=True)
    assert [p.url for p in proxies.ranked(now=100.5)] == ["http://a", "http://b"]
    assert proxies.next_for([a]) is b  # every other one tried: the resting one still gets its turn


async def test_a_registry_re_read_adds_and_drops_proxies_and_keeps_the_health_of_those_it_keeps() -> None:
    proxies = pool("http://a", "http://b/")
    kept = proxies.proxies[1]
    kept.health.succeeded(0.020)
    added, dropped = await proxies.retarget(["http://b", "http://c"])
    assert [p.url for p in added] == ["http://c"] and [p.url for p in dropped] == ["http://a"]
    assert [p.url for p in proxies.proxies] == ["http://b", "http://c"]
    assert proxies.proxies[0] is kept and kept.health.latency_ms == pytest.approx(20)
    assert not dropped[0].http.is_closed  # a request sent to it before may still be running
    await proxies.aclose()
    assert dropped[0].http.is_closed and all(p.http.is_closed for p in proxies.proxies)


async def test_a_dropped_proxy_closes_once_no_request_to_it_can_still_run() -> None:
    proxies = pool("http://a", "http://b", timeout=0)
    _, (gone,) = await proxies.retarget(["http://b"])
    proxies._retired = [(at - 11, p) for at, p in proxies._retired]  # past the client's timeout (+10 s)
    await proxies.retarget(["http://b"])
    assert gone.http.is_closed


async def test_a_re_read_listing_no_proxy_is_refused() -> None:
    proxies = pool("http://a")
    with pytest.raises(ConfigError, match="at least one proxy"):
        await proxies.retarget([])
    assert [p.url for p in proxies.proxies] == ["http://a"]


def test_a_registry_listing_more_proxies_than_the_cap_keeps_those_held_then_its_own_order() -> None:
    listed = [f"http://p{i}" for i in range(100)]
    assert within_cap(listed, 3) == ["http://p0", "http://p1", "http://p2"]
    assert within_cap(listed, 3, held=["http://p50/", "http://gone", "http://p1"]) == [
        "http://p50",
        "http://p1",
        "http://p0",
    ]
    assert within_cap(listed[:2], 8, held=["http://p1"]) == ["http://p1", "http://p0"]


def payer_for(url: str) -> ChannelPayer:
    return ChannelPayer(httpx.AsyncClient(base_url=url), ToncenterClient(f"{url}/chain"), SigningKey.generate())


async def test_a_payer_made_for_a_proxy_closes_with_it_and_one_given_by_the_app_does_not() -> None:
    proxies = pool("http://a", "http://b", timeout=0)
    made, given = proxies.proxies
    made.payer, made.owns_payer = payer_for("http://a"), True
    given.payer = payer_for("http://b")
    await proxies.retarget(["http://b"])
    proxies._retired = [(at - 11, p) for at, p in proxies._retired]
    await proxies.retarget(["http://b"])  # the dropped one is past the timeout: closed, and its payer
    assert made.payer.http.is_closed and made.payer.toncenter._http.is_closed
    await proxies.aclose()
    assert given.http.is_closed and not given.payer.http.is_closed  # the app closes what it made
    await given.payer.aclose()


async def test_a_payer_closes_only_after_the_voucher_it_is_sending() -> None:
    payer = payer_for("http://a")
    sent: list[bool] = []

    async def voucher_on_its_way() -> None:
        await asyncio.sleep(0.2)
        sent.append(not payer.http.is_closed)  # the voucher's POST would still have its client

    payer.book.paying = asyncio.create_task(voucher_on_its_way())
    await payer.aclose()
    assert sent == [True] and payer.http.is_closed
