"""A role's durable store: SQLAlchemy 2 async over SQLite (the default, one file) or PostgreSQL (shared).

``SqlStore`` makes the engine (plain ``sqlite:///`` and ``postgresql://`` URLs get their async drivers, SQLite its
WAL and full-sync pragmas), holds the write lock SQLite needs, named locks across processes, and creates its
tables on start. ``transact`` runs a hot path's whole transaction blocking, in one thread hop on SQLite. The
proxy keeps its books in one (``cocoon.proxy.store``), the sidecar its API keys in another.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar, cast

from sqlalchemy import BigInteger, Integer, MetaData, Table, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Session
from sqlalchemy.pool import ConnectionPoolEntry

from cocoon.errors import ConfigError

# A row per request outgrows INTEGER ids; SQLite autoincrements only an INTEGER PRIMARY KEY (64-bit there).
ROW_ID = BigInteger().with_variant(Integer, "sqlite")
T = TypeVar("T")


def table_of(model: type[DeclarativeBase]) -> Table:
    """The Core table of a mapped class, for statements that skip the ORM (executemany, prepared queries)."""
    return cast(Table, model.__table__)


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; every one a store keeps is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def async_url(url: str) -> str:
    """Accept plain ``sqlite:///`` and ``postgresql://`` URLs and pick the async driver for them."""
    for plain, driver in (("sqlite://", "sqlite+aiosqlite://"), ("postgresql://", "postgresql+asyncpg://")):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    if url.startswith("postgres://"):
        return "postgresql+asyncpg://" + url[len("postgres://") :]
    if url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        return url
    raise ConfigError(f"store URL {url!r} is neither SQLite nor PostgreSQL; use sqlite:///path or postgresql://...")


TRANSIENT_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock detected


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL aborting a transaction only to break a deadlock or a serialization conflict
    with another: the transaction changed nothing, and run again it may well succeed."""
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in TRANSIENT_SQLSTATES


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite store URL (async or plain); ``None`` for PostgreSQL."""
    url = async_url(url)
    prefix = "sqlite+aiosqlite:///"
    return Path(url[len(prefix) :]) if url.startswith(prefix) else None


def _sqlite_pragmas(dbapi_connection: object, _record: ConnectionPoolEntry) -> None:
    # WAL keeps readers off the writer's back; FULL sync because an acknowledged voucher must survive SIGKILL.
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class SqlStore:
    """One database and the tables of ``metadata`` in it.

    ``session()`` gives an ``AsyncSession``; commit before acknowledging anything that moves money. Named locks
    (``exclusive``) and the schema lock are PostgreSQL advisory locks keyed under ``lock_namespace``: stores of
    different roles on one server never share a lock, replicas of one role always do.
    """

    def __init__(self, url: str, metadata: MetaData, *, lock_namespace: str, make_folder: bool = True) -> None:
        """``make_folder``: make a SQLite file's folder now (else on ``start()``, for a store that may never be
        written: nothing is on disk before then)."""
        self.url = async_url(url)
        self.metadata = metadata
        self.lock_namespace = lock_namespace
        if make_folder:
            self._make_folder()
        self.engine: AsyncEngine = create_async_engine(self.url)
        if self.url.startswith("sqlite"):
            sync_engine: Engine = self.engine.sync_engine
            event.listen(sync_engine, "connect", _sqlite_pragmas)
        self.session: async_sessionmaker[AsyncSession] = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = asyncio.Lock() if self.url.startswith("sqlite") else None
        self._named: dict[str, asyncio.Lock] = {}
        # A SQLite file is also opened blocking, for ``transact``: a whole transaction in one thread hop.
        file = sqlite_file(self.url)
        self._blocking: Engine | None = None
        self._threads: dict[bool, ThreadPoolExecutor] = {}
        if file is not None and str(file) not in ("", ":memory:"):
            self._blocking = create_engine(f"sqlite:///{file}", connect_args={"check_same_thread": False})
            event.listen(self._blocking, "connect", _sqlite_pragmas)

    def _make_folder(self) -> None:
        file = sqlite_file(self.url)
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)

    @property
    def on_postgresql(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def lock_key(self, name: str) -> int:
        """The 64-bit advisory lock key PostgreSQL holds for the lock ``name``."""
        digest = hashlib.sha256(f"{self.lock_namespace}.{name}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def writing(self) -> contextlib.AbstractAsyncContextManager[object]:
        """Hold around a write transaction. SQLite has one writer; waiting here is cheaper than its busy
        handler, which sleeps. PostgreSQL runs writers concurrently: they lock the rows they change instead
        (``session.get(..., with_for_update=True)``, ignored by SQLite)."""
        return self._write_lock if self._write_lock is not None else contextlib.nullcontext()

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        """Hold the lock ``name`` against every process sharing this store, waiting for it (without blocking
        the event loop). On PostgreSQL a session advisory lock on a connection of its own: a replica killed
        while holding it drops its connection, and the server lets the lock go. SQLite serves one process, so
        a lock in this process is enough there."""
        if not self.on_postgresql:
            async with self._named.setdefault(name, asyncio.Lock()):
                yield
            return
        key = self.lock_key(name)
        async with self._named.setdefault(name, asyncio.Lock()), self.engine.connect() as conn:
            await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            await conn.commit()  # hold the lock, not a transaction, while the caller works
            try:
                yield
            finally:
                await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                await conn.commit()

    def insert(self, table: type[DeclarativeBase]) -> sqlite.Insert | postgresql.Insert:
        """``INSERT`` in this store's dialect, which can take an ``ON CONFLICT`` clause."""
        return (postgresql.insert if self.on_postgresql else sqlite.insert)(table)

    def insert_if_absent(self, table: type[DeclarativeBase]) -> sqlite.Insert | postgresql.Insert:
        """``INSERT ... ON CONFLICT DO NOTHING`` in this store's dialect: two transactions that both find a row
        missing (concurrent ones, on PostgreSQL) create it once, and neither fails. Lock it after with
        ``session.get(..., with_for_update=True)`` to change it."""
        return self.insert(table).on_conflict_do_nothing()

    async def start(self) -> None:
        """Create every table of ``metadata`` that does not exist yet; replicas starting together on one
        PostgreSQL take turns (an advisory lock for the transaction), so neither trips over the other's tables."""
        self._make_folder()
        async with self.engine.begin() as conn:
            if self.on_postgresql:
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": self.lock_key("schema")})
            await conn.run_sync(self.metadata.create_all)

    async def transact(self, work: Callable[[Session], T], *, write: bool) -> T:
        """``work(session)`` on a blocking ``Session``: it commits what it wants kept (the rest is rolled back).

        Why: through aiosqlite every statement is about four hops between the event loop and aiosqlite's thread
        (cursor, execute, fetch, close), each waiting its turn on a busy loop; a hot path of several statements
        spends most of its time there. On a SQLite file ``work`` runs in this store's own thread instead, one
        hop for the whole transaction (writes on the writer thread: hold ``writing()`` around the call). On
        PostgreSQL (and in-memory SQLite) it runs in the async session's greenlet, each statement a round trip
        through the async driver as before. ``work`` must not touch the event loop: it may run in a thread."""
        if self._blocking is None:
            async with self.session() as session:
                return await session.run_sync(work)
        blocking = self._blocking

        def run() -> T:
            with Session(blocking, expire_on_commit=False) as session:
                return work(session)

        # One writer thread (SQLite has one writer) and one reader beside it (WAL lets it read meanwhile).
        thread = self._threads.get(write)
        if thread is None:
            thread = self._threads[write] = ThreadPoolExecutor(1, f"cocoon-store-{'write' if write else 'read'}")
        # Shielded: a caller cancelled meanwhile does not stop a transaction already in the thread.
        return await asyncio.shield(asyncio.get_running_loop().run_in_executor(thread, run))

    async def close(self) -> None:
        await self.engine.dispose()
        if self._blocking is not None:
            for thread in self._threads.values():
                thread.shutdown(wait=True)
            self._threads.clear()
            self._blocking.dispose()
