"""The facts the explorer shows, as JSON (``GET /v1/stats``, ``/v1/stats/workers``, ``/v1/stats/money``) and as
the pages' data: built from the same sources as ``/v1/directory``, ``/v1/models`` and ``/v1/books``, so the
numbers agree. Amounts are integer nanoton; what is in TON is for display only.

Money here is aggregates and worker channels: the per-client rows of ``/v1/books`` stay with operators.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select

from cocoon.chain.address import address_text, raw_address
from cocoon.proxy.explorer.buckets import DAY_S, MINUTE_S, Bucket, merged, minute_of, per_slot, percentile_ms
from cocoon.proxy.explorer.timeline import Timeline
from cocoon.proxy.money.ledger import ChainOperation, WorkerAccount, as_utc
from cocoon.proxy.money.paid import PaidCashier
from cocoon.proxy.money.statements import books_json
from cocoon.proxy.routing.views import directory_json, models_json
from cocoon.proxy.state import ProxyState

RATE_WINDOW_S = 300  # requests/min, tokens/s and TTFT percentiles are over the last five minutes
CHART_MINUTES = 60
CHART_DAYS = 30
OPERATIONS_SHOWN = 50
# Block explorers by network; the local devnet has none.
CHAIN_EXPLORERS = {"mainnet": "https://tonviewer.com/", "testnet": "https://testnet.tonviewer.com/"}
ECONOMICS = (
    "Revenue is what clients paid for verified completions: each receipt's tokens at the registry's prices "
    "times the worker's coefficient. The worker earns that less the proxy's fee; the proxy keeps the fee. "
    "There are no token emissions in cocoon: every nanoton shown here came from a client's deposit."
)


async def network_stats(state: ProxyState, timeline: Timeline) -> dict[str, Any]:
    """Models with their prices and traffic, workers online, and the series the charts draw."""
    now = time.time()
    window_start = minute_of(now) - RATE_WINDOW_S + MINUTE_S
    elapsed = max(1.0, now - window_start)
    chart_start = minute_of(now) - (CHART_MINUTES - 1) * MINUTE_S
    rows = await timeline.since(min(window_start, chart_start))
    recent: dict[str, list[Bucket]] = {}
    for minute, model, bucket in rows:
        if minute >= window_start:
            recent.setdefault(model, []).append(bucket)
    models = models_json(state.directory)
    serving = {name: [w.register for w in workers] for name, workers in state.directory.models().items()}
    await state.cashier.annotate_models(models, serving)
    entries = [_model_entry(m, merged(recent.pop(m["id"], [])), elapsed) for m in models]
    for name, buckets in sorted(recent.items()):  # traffic lately for a model nobody serves right now
        entries.append(_model_entry({"id": name, "workers": 0}, merged(buckets), elapsed))
    total = merged(b for minute, _, b in rows if minute >= window_start)
    minutes = per_slot(((m, b) for m, _, b in rows), chart_start, minute_of(now) + MINUTE_S, MINUTE_S)
    day_start = (int(now) // DAY_S - (CHART_DAYS - 1)) * DAY_S
    days = await timeline.by_day(day_start)
    return {
        "proxy_id": state.proxy_id,
        "network": state.settings.network if state.settings.chain_url else "free",
        "workers_online": len(state.directory.workers),
        "window_s": RATE_WINDOW_S,
        "models": entries,
        "totals": _traffic(total, elapsed),
        "series": {
            "minutes": [_slot(t, b) for t, b in minutes],
            "days": [_slot(t, b) for t, b in per_slot(days.items(), day_start, day_start + CHART_DAYS * DAY_S, DAY_S)],
        },
        "economics": ECONOMICS,
    }


def _model_entry(model: dict[str, Any], bucket: Bucket, elapsed: float) -> dict[str, Any]:
    entry: dict[str, Any] = {"model": model["id"], "workers": model.get("workers", 0)}
    if "pricing" in model:
        pricing = {k: v for k, v in model["pricing"].items() if isinstance(v, int)}
        entry["price_per_million"] = pricing  # nanoton per million tokens at coefficient 1000
        entry["price_coefficients"] = model.get("price_coefficients", [])
        entry["proxy_fee_bps"] = model.get("proxy_fee_bps")
    return entry | _traffic(bucket, elapsed)


def _traffic(bucket: Bucket, elapsed: float) -> dict[str, Any]:
    p50, p99 = percentile_ms(bucket.ttft, 0.5), percentile_ms(bucket.ttft, 0.99)
    return {
        "requests": bucket.requests,
        "errors": bucket.errors,
        "requests_per_min": round(bucket.requests * 60 / elapsed, 2),
        "tokens_per_s": round(bucket.tokens / elapsed, 2),
        "completion_tokens_per_s": round(bucket.completion_tokens / elapsed, 2),
        "ttft_p50_ms": None if p50 is None else round(p50, 1),
        "ttft_p99_ms": None if p99 is None else round(p99, 1),
        "charged": bucket.charged,
    }


def _slot(moment: int, bucket: Bucket) -> dict[str, int]:
    return {
        "t": moment,
        "requests": bucket.requests,
        "errors": bucket.errors,
        "tokens": bucket.tokens,
        "charged": bucket.charged,
    }


async def workers_stats(state: ProxyState) -> dict[str, Any]:
    """Every connected worker as ``/v1/directory`` shows it, with its attestation summed up and its earnings
    (its payout channel's row in ``/v1/books``; workers sharing a payout wallet share one channel)."""
    directory = directory_json(state.directory, state.routing, state.proxy_id, None)
    cashier = state.cashier
    channels: dict[str, str] = {}
    accounts: dict[str, WorkerAccount] = {}
    if isinstance(cashier, PaidCashier):
        for worker in state.directory.workers.values():
            if worker.register.payout_address:
                channels[worker.worker_id] = cashier.chain.worker_channel(raw_address(worker.register.payout_address))
        async with state.store.session() as session:
            found = await session.scalars(select(WorkerAccount).where(WorkerAccount.channel.in_(channels.values())))
            accounts = {a.channel: a for a in found}
    workers = []
    for w in directory["workers"]:
        entry = state.directory.workers.get(w["worker_id"])
        verified = entry.verified if entry is not None else None
        w["attested"] = {
            "provider": verified.provider if verified else "",
            "measurement": verified.measurement if verified else "",
            "gpus": verified.gpus if verified else 0,
        }
        channel = channels.get(w["worker_id"])
        account = accounts.get(channel) if channel else None
        w["earnings"] = None
        if channel is not None:
            w["earnings"] = {
                "channel": channel,
                "vouchered": account.vouchered if account else 0,
                "funded": account.funded if account else 0,
                "claimed": account.claimed if account else 0,
                "explorer_url": explorer_url(state.settings.network, channel),
            }
        workers.append(w)
    return {"proxy_id": state.proxy_id, "workers": workers}


async def money_stats(state: ProxyState) -> dict[str, Any]:
    """What clients paid, what workers earned, the proxy's fees, and how much of it the chain has settled, from
    the books ``/v1/books`` shows; ``{"paid": false}`` on a free proxy."""
    cashier = state.cashier
    if not isinstance(cashier, PaidCashier):
        return {"paid": False, "economics": "this proxy is free: it bills nobody, so no money moves"}
    books: dict[str, Any] = await books_json(cashier.chain, cashier.billing.reserved)
    network = state.settings.network
    clients, workers = books["clients"], books["workers"]
    claimed_from_clients = sum(c["claimed"] for c in clients)
    funded = sum(w["funded"] for w in workers)
    client_debits, worker_credits = books["client_debits"], books["worker_credits"]
    async with state.store.session() as session:
        operations = (
            await session.scalars(select(ChainOperation).order_by(ChainOperation.id.desc()).limit(OPERATIONS_SHOWN))
        ).all()
    registry = address_text(cashier.chain.registry.address, testnet=network == "testnet")
    wallet = address_text(cashier.chain.wallet.address, testnet=network == "testnet")
    return {
        "paid": True,
        "network": network,
        "proxy_wallet": wallet,
        "proxy_wallet_url": explorer_url(network, wallet),
        "registry": registry,
        "registry_url": explorer_url(network, registry),
        "proxy_fee_bps": books["proxy_fee_bps"],
        "client_payments": client_debits,
        "worker_earnings": worker_credits,
        "proxy_fees": books["proxy_fees"],
        "worker_shares_withheld": books["worker_shares_withheld"],
        "client_channels": len(clients),
        "client_deposits": sum(c["deposit"] for c in clients),
        "settled_from_clients": claimed_from_clients,
        "owed_by_clients_unsettled": client_debits - claimed_from_clients,
        "funded_to_workers": funded,
        "owed_to_workers_unfunded": worker_credits - funded,
        "claimed_by_workers": sum(w["claimed"] for w in workers),
        "receipts": books["receipts"],
        "onchain_operations": books["onchain_operations"],
        "workers": [w | {"explorer_url": explorer_url(network, w["channel"])} for w in workers],
        "operations": [
            {
                "kind": op.kind,
                "channel": op.channel,
                "amount": op.amount,
                "ok": bool(op.ok),
                "detail": op.detail,
                "at": as_utc(op.created_at).isoformat(),
                "explorer_url": explorer_url(network, op.channel),
            }
            for op in operations
        ],
        "operation_fees": "each claim or top-up attaches 0.02 TON of gas to the proxy's message and the unused "
        "part returns; a claim costs about 0.004 TON in fees (contracts/README.md)",
        "economics": ECONOMICS,
    }


def explorer_url(network: str, address: str) -> str | None:
    """A block explorer's page for ``address`` on mainnet or testnet; ``None`` on the devnet, which has none."""
    base = CHAIN_EXPLORERS.get(network)
    if base is None:
        return None
    return base + address_text(address, testnet=network == "testnet")


async def all_stats(state: ProxyState, timeline: Timeline) -> dict[str, Any]:
    """``GET /v1/stats``: network, workers and money together."""
    return (await network_stats(state, timeline)) | {
        "workers": (await workers_stats(state))["workers"],
        "money": await money_stats(state),
    }
