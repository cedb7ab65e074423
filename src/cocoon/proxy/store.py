"""The proxy's durable store: its books and reputation, over SQLite (default) or PostgreSQL (``cocoon.store``).

Modules declare their tables on ``Base``; ``Store.start()`` creates whatever is missing. Money's tables live in
``cocoon.proxy.money.ledger``, reputation's in ``cocoon.proxy.routing.reputation_store``.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import DeclarativeBase

from cocoon.store import SqlStore


class Base(DeclarativeBase):
    """Declarative base of every table the proxy keeps."""


def default_url(data_dir: Path) -> str:
    """The SQLite file under the proxy's data directory."""
    return f"sqlite+aiosqlite:///{data_dir / 'proxy.sqlite3'}"


class Store(SqlStore):
    """One database per proxy (or one shared PostgreSQL for several replicas), holding the tables on ``Base``.

    ``session()`` gives an ``AsyncSession``; commit before acknowledging anything that moves money.
    """

    def __init__(self, url: str) -> None:
        # The namespace keeps the advisory lock keys replicas of earlier versions hold ("cocoon.proxy.<name>").
        super().__init__(url, Base.metadata, lock_namespace="cocoon.proxy")
