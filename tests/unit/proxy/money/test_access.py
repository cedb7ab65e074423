"""Who may read the books and start settlement: a forwarded request is never local, whatever its headers claim;
operators hold the configured key; without one, only this host's own sockets count as operators."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from cocoon.proxy.money.access import is_local, is_operator


def request(peer: str, headers: dict[str, str] | None = None) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": raw, "client": (peer, 5555)})


def test_a_loopback_socket_with_no_forwarder_is_local() -> None:
    assert is_local(request("127.0.0.1")) and is_local(request("::1"))
    assert not is_local(request("203.0.113.9"))


@pytest.mark.parametrize("header", ["x-forwarded-for", "forwarded", "x-real-ip"])
def test_a_request_through_a_forwarder_is_never_local_even_when_it_claims_loopback(header: str) -> None:
    assert not is_local(request("127.0.0.1", {header: "127.0.0.1"}))


def test_with_an_operator_key_only_its_bearer_is_an_operator_even_on_loopback() -> None:
    assert is_operator(request("203.0.113.9", {"authorization": "Bearer s3cret"}), "s3cret")
    assert not is_operator(request("127.0.0.1"), "s3cret")
    assert not is_operator(request("127.0.0.1", {"authorization": "Bearer s3cre"}), "s3cret")


def test_without_an_operator_key_a_local_caller_is_the_operator() -> None:
    assert is_operator(request("127.0.0.1"), None)
    assert not is_operator(request("127.0.0.1", {"x-forwarded-for": "127.0.0.1"}), None)
    assert not is_operator(request("203.0.113.9", {"authorization": "Bearer anything"}), None)
