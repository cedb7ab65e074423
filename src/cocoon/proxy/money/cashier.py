"""The seam between the relay and money: a ``Cashier`` admits a request, hears each receipt, and lets go.

A paid proxy's cashier is ``PaidCashier`` (``cocoon.proxy.money.paid``); a free proxy's is ``FreeCashier``, which
admits everyone and charges nobody. ``MockCashier`` (``cocoon.proxy.money.mock``) is the one tests use.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from cocoon.protocol import JobEnd, JobRequest, Register

FREE_PROXY = "this proxy is free: it bills nobody (start it with chain_url and registry set)"


@dataclass(eq=False, slots=True)
class Reservation:
    """What one admitted request holds against its channel until it ends (or, if its end is lost, expires)."""

    channel: str
    amount: int  # nanoton
    expires: float  # time.monotonic()
    receipts: list[str] = field(default_factory=list)
    charged: int = 0  # nanoton of valid receipts charged against it: never more than ``amount``


class Cashier(Protocol):
    """What the proxy's request path asks of money. One per proxy; every method is called on the event loop.

    ``admit(job, candidates)`` is awaited once per request, after routing ranked the ``candidates`` (the
    registrations of the workers it may go to) and before any worker sees the job. It returns the request's
    ``Reservation``, or raises the ``CocoonError`` the client gets instead (``PaymentRequired``, ``Unauthorized``,
    ``ModelNotFound``, ``BadRequest``); after a refusal no worker is contacted and nothing is to release.

    ``on_receipt(reservation, worker, end, valid)`` is awaited once for each receipt the relay forwards, and the
    relay yields that receipt to the client only after it returns: a charge is durable before the client can pay
    it. ``valid`` is ``False`` when the proxy found the receipt's signature wrong (it is forwarded, never charged);
    a paid cashier also books as invalid a receipt whose cost would take its reservation past ``amount``.
    A hedge loser's prefill-only receipt comes here (valid) when it verifies and claims no completion tokens;
    otherwise it is neither forwarded nor passed here. An error raised here ends the client's stream without
    that receipt.

    ``release(reservation)`` is called when the request ends, however it ends (every candidate failed, the receipt
    went out, the client hung up); no receipt for it follows. It is idempotent: a second call, or a call for a
    reservation that already expired, does nothing. A response that never started sending is never released:
    reservations expire on their own.

    ``check_worker(register)`` raises ``BadRequest`` for a worker this cashier could not pay; it then never joins.
    ``annotate_models(data, serving)`` adds pricing to ``GET /v1/models`` entries in place (``serving``: model →
    registrations of the workers serving it). ``close()`` is awaited once at shutdown.

    ``withhold(worker, since, reason)`` is awaited when canaries caught ``worker`` serving another model than it
    attests: its share of every charge made since ``since`` (its last passed canary) and not yet vouchered to it
    is kept back, and the books show the hold. Shares vouchered before the flag are signed and cannot be undone.
    """

    async def admit(self, job: JobRequest, candidates: Sequence[Register]) -> Reservation: ...

    async def on_receipt(self, reservation: Reservation, worker: Register, end: JobEnd, valid: bool) -> None: ...

    def release(self, reservation: Reservation) -> None: ...

    def check_worker(self, register: Register) -> None: ...

    async def annotate_models(self, data: list[dict[str, Any]], serving: Mapping[str, Sequence[Register]]) -> None: ...

    async def withhold(self, worker: Register, since: datetime, reason: str) -> None: ...

    async def close(self) -> None: ...


class FreeCashier:
    """The cashier of a free proxy (no ``chain_url``): admits every request, charges nothing, shows no prices.

    The money routes answer 404 ``FREE_PROXY`` while the proxy holds one of these.
    """

    async def admit(self, job: JobRequest, candidates: Sequence[Register]) -> Reservation:
        return Reservation(channel="", amount=0, expires=math.inf)

    async def on_receipt(self, reservation: Reservation, worker: Register, end: JobEnd, valid: bool) -> None:
        return None

    def release(self, reservation: Reservation) -> None:
        return None

    def check_worker(self, register: Register) -> None:
        return None

    async def annotate_models(self, data: list[dict[str, Any]], serving: Mapping[str, Sequence[Register]]) -> None:
        return None

    async def withhold(self, worker: Register, since: datetime, reason: str) -> None:
        return None  # a free proxy pays nobody: there is nothing to hold

    async def close(self) -> None:
        return None
