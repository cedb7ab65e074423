"""``cocoon client keys``: the sidecar's API keys. Each has a budget in TON (the live keys' unspent budgets
together within what the client's deposits have left), and may have an rpm, a list of models and an expiry.
The key is shown once, at ``create``; the sidecar keeps only its SHA-256."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from cocoon.chain.pricing import parse_ton
from cocoon.cli.common import ConfigOpt, JsonOpt, clear_errors, console, load_settings, run_with_spinner, ton
from cocoon.client.keys import ApiKey, KeyStore
from cocoon.config import ClientSettings
from cocoon.errors import ConfigError
from cocoon.store import utcnow

T = TypeVar("T")

keys_app = typer.Typer(
    help="The sidecar's API keys: make one per app with a budget in TON, list, revoke, top up, see their usage.",
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    no_args_is_help=True,
)

KeyRef = Annotated[str, typer.Argument(help="the key's name or id", metavar="NAME|ID")]
BudgetOpt = Annotated[str, typer.Option("--budget", help="TON the key may spend, up to 9 decimals, e.g. 0.5")]


def _with_store(settings: ClientSettings, work: Callable[[KeyStore], Coroutine[Any, Any, T]]) -> T:
    async def run() -> T:
        store = KeyStore.for_settings(settings)
        try:
            return await work(store)
        finally:
            await store.close()

    with clear_errors():
        return asyncio.run(run())


def _deposit_left(settings: ClientSettings) -> int | None:
    """What the client's channels can still pay, summed over the proxies it uses; ``None`` for a sidecar that
    pays nobody (no ``chain_url``). Exits with a clear line when the chain or a proxy cannot be read."""
    if not settings.chain_url:
        console.print("note: this sidecar pays no proxy (no chain_url): budgets are not backed by a deposit")
        return None
    from cocoon.client.escrow import deposit_left

    return run_with_spinner(
        "reading the client's deposit", lambda: deposit_left(settings), peer=f"the chain at {settings.chain_url}"
    )


def _no_shared_api_key(settings: ClientSettings) -> None:
    if settings.api_key:
        with clear_errors():
            raise ConfigError("api_key is set in the client's settings: API keys replace it; unset api_key first")


@keys_app.command()
def create(
    name: Annotated[str, typer.Option("--name", help="what the key is for, e.g. ci-bot (letters, digits, . _ -)")],
    budget: BudgetOpt,
    rpm: Annotated[int, typer.Option(help="requests a minute the key may make (0: no limit)", min=0)] = 0,
    models: Annotated[str | None, typer.Option(help="the only models it may use, comma-separated")] = None,
    expires: Annotated[float | None, typer.Option(help="days until the key stops working", min=0)] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Make a key; it is printed once, on stdout. Refused when the deposit cannot back its budget."""
    settings = load_settings(ClientSettings, config)
    _no_shared_api_key(settings)
    with clear_errors():
        nanoton = parse_ton(budget)
    ceiling = _deposit_left(settings)
    allowed = [m.strip() for m in (models or "").split(",") if m.strip()]
    expires_at = utcnow() + timedelta(days=expires) if expires is not None else None

    async def work(store: KeyStore) -> tuple[ApiKey, str]:
        return await store.create(name, nanoton, rpm=rpm, models=allowed, expires_at=expires_at, ceiling=ceiling)

    key, secret = _with_store(settings, work)
    if as_json:
        print(json.dumps({"key": secret, **key.to_json(utcnow())}, indent=2))
        return
    console.print(f"[green]✓[/] key {key.name} ({key.id}) may spend {ton(key.budget)}; save it now, it is shown once:")
    print(secret)


@keys_app.command("list")
def list_keys(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Every key: its state, budget, what it spent and holds for requests in flight, and its limits."""
    settings = load_settings(ClientSettings, config)
    keys = _with_store(settings, lambda store: store.keys())
    now = utcnow()
    if as_json:
        print(json.dumps([k.to_json(now) for k in keys], indent=2))
        return
    table = Table(title=f"API keys ({len(keys)})")
    for column in ("name", "id", "key", "state", "budget", "spent", "held", "left", "rpm", "models", "expires", "used"):
        table.add_column(column, justify="right" if column in ("budget", "spent", "held", "left", "rpm") else "left")
    for k in keys:
        table.add_row(
            k.name, k.id, k.hint, k.state(now), ton(k.budget), ton(k.spent), ton(k.reserved), ton(max(0, k.left)),
            str(k.rpm or "-"), ",".join(k.models) or "all", _when(k.expires_at), _when(k.used_at),
        )  # fmt: skip
    Console().print(table)


@keys_app.command()
def revoke(key: KeyRef, config: ConfigOpt = None) -> None:
    """Refuse the key from now on (requests in flight finish); its usage stays on record."""
    settings = load_settings(ClientSettings, config)
    revoked = _with_store(settings, lambda store: store.revoke(key))
    console.print(f"[green]✓[/] key {revoked.name} ({revoked.id}) is revoked; it spent {ton(revoked.spent)}")


@keys_app.command()
def topup(
    key: KeyRef,
    amount: Annotated[str, typer.Option("--amount", help="TON to add to the key's budget, e.g. 0.25")],
    config: ConfigOpt = None,
) -> None:
    """Raise a key's budget by an amount, within what the deposit has left."""
    settings = load_settings(ClientSettings, config)
    with clear_errors():
        nanoton = parse_ton(amount)
    ceiling = _deposit_left(settings)
    raised = _with_store(settings, lambda store: store.top_up(key, nanoton, ceiling=ceiling))
    console.print(f"[green]✓[/] key {raised.name} may spend {ton(raised.budget)} ({ton(max(0, raised.left))} left)")


@keys_app.command("set-budget")
def set_budget(key: KeyRef, budget: BudgetOpt, config: ConfigOpt = None) -> None:
    """Give a key a new budget: no less than it spent and holds, within what the deposit has left."""
    settings = load_settings(ClientSettings, config)
    with clear_errors():
        nanoton = parse_ton(budget)
    ceiling = _deposit_left(settings)
    changed = _with_store(settings, lambda store: store.set_budget(key, nanoton, ceiling=ceiling))
    console.print(f"[green]✓[/] key {changed.name} may spend {ton(changed.budget)} ({ton(max(0, changed.left))} left)")


@keys_app.command()
def usage(
    key: Annotated[str | None, typer.Option("--key", help="one key's name or id [default: every key]")] = None,
    days: Annotated[int, typer.Option(help="the last this many days (UTC)", min=1)] = 30,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What each key spent, per model and day."""
    settings = load_settings(ClientSettings, config)
    since = utcnow().replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=days - 1)
    rows = _with_store(settings, lambda store: store.usage(since, key))
    if as_json:
        fields = [{"day": u.day.isoformat(), "key": u.key, "model": u.model, "requests": u.requests, "cost": u.cost}
                  for u in rows]  # fmt: skip
        print(json.dumps(fields, indent=2))
        return
    table = Table(title=f"spent per key, model and day, since {since.date().isoformat()}")
    for column in ("day", "key", "model", "requests", "cost"):
        table.add_column(column, justify="right" if column in ("requests", "cost") else "left")
    for u in rows:
        table.add_row(u.day.isoformat(), u.key, u.model, str(u.requests), ton(u.cost))
    table.add_section()
    table.add_row("total", "", "", str(sum(u.requests for u in rows)), ton(sum(u.cost for u in rows)))
    Console().print(table)


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="minutes") if moment is not None else "-"
