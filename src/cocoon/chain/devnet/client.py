"""Talking to a running devnet: its devnet-only endpoints (fund, advance_time, faults, status) and the bootstrap that
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
class ToncenterCounters:
    """What the real-toncenter mode did since the devnet started."""

    cache_hits: int = 0  # reads answered from the read cache
    messages_delayed: int = 0  # accepted messages held for the inclusion delay
    messages_dropped: int = 0  # accepted messages never applied (drop_next, drop rate)
    messages_lost: int = 0  # delayed messages that no longer applied when their turn came
    duplicates: int = 0  # sends of a message already waiting, not queued twice
    faults_injected: int = 0  # API requests answered with an injected error (fail_next, fault rate)
    rate_limited: int = 0  # API requests answered 429 by the rate limits


@dataclass(frozen=True, slots=True)
class ToncenterMode:
    """The devnet's real-toncenter knobs as they stand (0 is off) and its counters."""

    read_cache_ms: float = 0
    inclusion_delay_ms: float = 0
    drop_rate: float = 0.0
    fault_rate: float = 0.0
    keyless_rps: float = 0
    key_rps: float = 0
    seed: int = 1
    drop_next: int = 0
    fail_next: tuple[int, ...] = ()
    pending_messages: int = 0  # accepted messages still waiting for their inclusion delay
    counters: ToncenterCounters = field(default_factory=ToncenterCounters)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ToncenterMode:
        return cls(
            read_cache_ms=raw["read_cache_ms"],
            inclusion_delay_ms=raw["inclusion_delay_ms"],
            drop_rate=raw["drop_rate"],
            fault_rate=raw["fault_rate"],
            keyless_rps=raw["keyless_rps"],
            key_rps=raw["key_rps"],
            seed=int(raw["seed"]),
            drop_next=int(raw["drop_next"]),
            fail_next=tuple(int(status) for status in raw["fail_next"]),
            pending_messages=int(raw["pending_messages"]),
            counters=ToncenterCounters(**{k: int(v) for k, v in raw["counters"].items()}),
        )


@dataclass(frozen=True, slots=True)
class DevnetStatus:
    """The devnet's clock and activity: ``ops`` maps raw address → op code (hex) → message count."""

    now: int
    time_offset: int
    transactions: int
    treasury: str
    ops: dict[str, dict[str, int]] = field(default_factory=dict)
    toncenter_mode: ToncenterMode = field(default_factory=ToncenterMode)

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
        mode = ToncenterMode.from_json(r["toncenter_mode"])
        return DevnetStatus(int(r["now"]), int(r["time_offset"]), int(r["transactions"]), r["treasury"], r["ops"], mode)

    async def set_faults(
        self,
        *,
        drop_next: int | None = None,
        fail_next: Sequence[int] | None = None,
        inclusion_delay_ms: int | None = None,
        read_cache_ms: int | None = None,
        fault_rate: float | None = None,
        drop_rate: float | None = None,
        keyless_rps: float | None = None,
        key_rps: float | None = None,
        seed: int | None = None,
    ) -> ToncenterMode:
        """Change the real-toncenter knobs at runtime; ``None`` leaves a knob as it is, 0 turns it off.

        ``drop_next`` drops the next K accepted messages; ``fail_next`` answers the next API requests with
        these HTTP statuses, in order (replacing any still queued). Returns the mode as it now stands."""
        settings: dict[str, Any] = {
            "drop_next": drop_next,
            "fail_next": list(fail_next) if fail_next is not None else None,
            "inclusion_delay_ms": inclusion_delay_ms,
            "read_cache_ms": read_cache_ms,
            "fault_rate": fault_rate,
            "drop_rate": drop_rate,
            "keyless_rps": keyless_rps,
            "key_rps": key_rps,
            "seed": seed,
        }
        result = await self._call("POST", "/devnet/faults", {k: v for k, v in settings.items() if v is not None})
        return ToncenterMode.from_json(result)

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
