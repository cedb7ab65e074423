"""Talking to a running devnet: its devnet-only endpoints (fund, advance_time, status) and the bootstrap that
deploys the registry and funds wallets on it. The toncenter v2 endpoints go through ``ToncenterClient``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from pytoniq_core.boc.address import Address

from cocoon.chain.address import address_text, raw_address
from cocoon.chain.contracts import TON
from cocoon.chain.registry import ModelEntry, ProxyEntry, Registry, RegistryParams
from cocoon.chain.toncenter import ToncenterClient
from cocoon.chain.wallet import Wallet
from cocoon.errors import ChainError, map_http_errors


@dataclass(frozen=True, slots=True)
class DevnetStatus:
    """The devnet's clock and activity: ``ops`` maps raw address → op code (hex) → message count."""

    now: int
    time_offset: int
    transactions: int
    treasury: str
    ops: dict[str, dict[str, int]] = field(default_factory=dict)

    def op_count(self, address: Address, op: int) -> int:
        return self.ops.get(raw_address(address), {}).get(f"0x{op:08x}", 0)


class DevnetClient:
    """The devnet-only endpoints; the toncenter ones go through ``ToncenterClient``.

    Every failure, a devnet that does not answer included, raises ChainError."""

    def __init__(self, base_url: str, *, timeout: float = 15.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)

    async def __aenter__(self) -> DevnetClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def fund(self, address: Address, amount: int) -> int:
        """Send ``amount`` nanoton from the devnet treasury (non-bounceable); returns the new balance."""
        result = await self._call("POST", "/devnet/fund", {"address": address_text(address), "amount": str(amount)})
        return int(result["balance"])

    async def advance_time(self, seconds: int) -> int:
        """Move the chain clock forward (close delays pass without sleeping); returns the new ``now``."""
        result = await self._call("POST", "/devnet/advance_time", {"seconds": seconds})
        return int(result["now"])

    async def status(self) -> DevnetStatus:
        r = await self._call("GET", "/devnet/status")
        return DevnetStatus(int(r["now"]), int(r["time_offset"]), int(r["transactions"]), r["treasury"], r["ops"])

    async def _call(self, method: str, path: str, payload: Any = None) -> Any:
        with map_http_errors(f"the devnet at {self.base_url} ({path})", error=ChainError, timeout=ChainError):
            response = await self._http.request(method, path, json=payload)
        try:
            body = response.json()
        except ValueError as exc:
            raise ChainError(f"the devnet at {self.base_url} answered {path} with a non-JSON body: {exc}") from exc
        if not body.get("ok"):
            raise ChainError(f"devnet {path} failed: {body.get('error')}")
        return body["result"]


async def bootstrap_devnet(
    devnet: DevnetClient,
    chain: ToncenterClient,
    *,
    owner: Wallet,
    params: RegistryParams | None = None,
    models: Sequence[ModelEntry] = (),
    measurements: Sequence[bytes] = (),
    proxies: Sequence[ProxyEntry] = (),
    fund: Mapping[Address, int] | None = None,
    owner_balance: int = 100 * TON,
) -> Registry:
    """Fund ``owner`` and the ``fund`` addresses, deploy the registry (once) and fill it; returns it."""
    await devnet.fund(owner.address, owner_balance)
    for address, amount in (fund or {}).items():
        await devnet.fund(address, amount)
    registry = Registry.for_deploy(chain, owner.address, params or RegistryParams())
    if not await registry.is_deployed():
        await registry.deploy(owner)
    for model in models:
        await registry.upsert_model(owner, model)
    for measurement in measurements:
        await registry.add_measurement(owner, measurement)
    for proxy in proxies:
        await registry.upsert_proxy(owner, proxy)
    return registry
