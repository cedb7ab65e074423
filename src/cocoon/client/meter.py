"""A limit on what requests may spend beyond the payer's own: the seam between the SDK and the sidecar's API-key
budgets (``cocoon.client.keys``).

The SDK asks a ``Meter`` to hold each sealed job's maximum cost just before it posts the job, tells the ``Hold``
what each payment for the job cost once the voucher is accepted, and releases the hold when the job ends.
Without a meter (the SDK used on its own) a job holds ``NOTHING_HELD``: the payer's deposit and the proxy's
credit limit are the only limits.
"""

from __future__ import annotations

from typing import Protocol


class Hold(Protocol):
    """One job's reservation. ``paid(cost)`` is awaited after each voucher for the job's receipts is accepted
    (nanoton; the hold's amount bounds their sum, as the proxy bounds its charges); ``release()`` once when the
    job ends, however it ends (a second call does nothing): what the payments did not use goes back. Both finish
    their write even when the awaiting request is cancelled; they raise only when the store itself fails."""

    async def paid(self, cost: int) -> None: ...

    async def release(self) -> None: ...


class Meter(Protocol):
    """What a request's jobs may spend. ``hold(request_id, model, amount)`` reserves ``amount`` nanoton (the
    job's maximum cost, ``chain.pricing.max_cost`` of the sealed bytes, ``max_tokens`` and the highest price
    coefficient among the workers it is sealed to; 0 on a free proxy) or raises the ``CocoonError`` the app
    gets instead (``BudgetExhausted``); after a refusal the job is never posted.

    ``cache_partition`` keeps the prompt cache of the meter's requests apart from the client's others (an API
    key's id: one key's app cannot time another's prompts through a worker's cache)."""

    cache_partition: str

    async def hold(self, request_id: str, model: str, amount: int) -> Hold: ...


class _Nothing:
    """The hold of a job nothing limits."""

    async def paid(self, cost: int) -> None:
        return None

    async def release(self) -> None:
        return None


NOTHING_HELD: Hold = _Nothing()
