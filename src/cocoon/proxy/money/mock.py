"""A ``Cashier`` for tests, as httpx ships ``MockTransport``: it records what the relay told it and can refuse.

Use it where a test needs to see the money calls of the request path without a chain or a store.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from cocoon.errors import CocoonError
from cocoon.protocol import JobEnd, JobRequest, Register
from cocoon.proxy.money.cashier import FreeCashier, Reservation


@dataclass(frozen=True, slots=True)
class SeenReceipt:
    """One ``on_receipt`` call: which worker's receipt, and whether the proxy found it valid."""

    worker_id: str
    end: JobEnd
    valid: bool


class MockCashier(FreeCashier):
    """Admits every request (or raises ``refuse`` from ``admit``) and records every call, in order; charges
    nothing and shows no prices, as ``FreeCashier``."""

    def __init__(self, refuse: CocoonError | None = None) -> None:
        self.refuse = refuse
        self.admitted: list[Reservation] = []
        self.receipts: list[SeenReceipt] = []
        self.released: list[Reservation] = []

    async def admit(self, job: JobRequest, candidates: Sequence[Register]) -> Reservation:
        if self.refuse is not None:
            raise self.refuse
        reservation = Reservation(channel=job.request_id, amount=0, expires=math.inf)
        self.admitted.append(reservation)
        return reservation

    async def on_receipt(self, reservation: Reservation, worker: Register, end: JobEnd, valid: bool) -> None:
        self.receipts.append(SeenReceipt(worker.worker_id, end, valid))
        reservation.receipts.append(end.receipt.receipt_id)

    def release(self, reservation: Reservation) -> None:
        if reservation not in self.released:
            self.released.append(reservation)
