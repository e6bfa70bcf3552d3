"""Engine, sessions and the declarative base shared by every domain's models."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, NewType

from sqlalchemy import DateTime, MetaData, func, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.util import greenlet_spawn

from referloop.core.ids import uuid7

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: DateTime(timezone=True), uuid.UUID: UUID(as_uuid=True)}


def utcnow() -> datetime:
    return datetime.now(UTC)


class IdMixin:
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid7)


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow, onupdate=utcnow)


class SoftDeleteMixin:
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)


# Distinct types so that mypy catches a write on a read path (read sessions may later hit a replica).
AsyncWriteSession = NewType("AsyncWriteSession", AsyncSession)
AsyncReadSession = NewType("AsyncReadSession", AsyncSession)


class Database:
    """Owns the engines and hands out sessions. One per process.

    Two pools: `engine` for write sessions, and `read_engine`, whose connections PostgreSQL itself
    holds read-only (`default_transaction_read_only=on`), for the read session type of GET routes.
    A write through a read session fails with "cannot execute ... in a read-only transaction"
    instead of quietly succeeding, and pointing `read_url` at a replica later changes nothing else."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 20,
        max_overflow: int = 10,
        read_pool_size: int | None = None,
        read_url: str | None = None,
        **kwargs: Any,
    ) -> None:
        server_settings = {"application_name": "referloop", "timezone": "UTC"}
        self.engine: AsyncEngine = create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_pre_ping=False,
            connect_args={"server_settings": server_settings},
            **kwargs,
        )
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False, autoflush=False)
        # Reads run in autocommit: each SELECT is one round trip instead of BEGIN, SELECT, ROLLBACK.
        # A read route that needs one snapshot across several queries opens its own transaction
        # (read-only too: the setting is the connection's default for every transaction).
        self.read_engine: AsyncEngine = create_async_engine(
            read_url or url,
            pool_size=read_pool_size or pool_size,
            max_overflow=max_overflow,
            pool_pre_ping=False,
            isolation_level="AUTOCOMMIT",
            connect_args={
                "server_settings": {
                    **server_settings,
                    "application_name": "referloop-read",
                    "default_transaction_read_only": "on",
                }
            },
            **kwargs,
        )
        _share_events(self.read_engine, self.engine)
        self.read_sessionmaker = async_sessionmaker(self.read_engine, expire_on_commit=False, autoflush=False)

    @asynccontextmanager
    async def read_connection(self) -> AsyncIterator[Any]:
        """An asyncpg connection from the read pool, without an ORM session: for the hottest read
        routes, whose answer is one raw statement. Read-only and autocommit like a read session; a
        read session costs about 150 µs of CPU more per request (session, lazy begin, close)."""
        pooled = await self.read_engine.raw_connection()
        try:
            driver = pooled.driver_connection
            yield driver if _raw_tracer is None else _TracedDriver(driver, _raw_tracer)
        except asyncio.CancelledError:
            # Cancelled mid-statement (the client went away): the protocol may be mid-answer, so the
            # connection is closed rather than handed to the next request.
            await greenlet_spawn(pooled.invalidate)
            raise
        finally:
            if pooled.is_valid:
                await greenlet_spawn(pooled.close)

    async def dispose(self) -> None:
        await self.read_engine.dispose()
        await self.engine.dispose()


def _share_events(child: AsyncEngine, parent: AsyncEngine) -> None:
    """Statement listeners attached to `parent`, now or later (tracing instruments `Database.engine`),
    hear `child`'s statements too: what SQLAlchemy does for an engine made by `execution_options()`,
    which shares its parent's pool and so cannot be read-only on its own."""
    sync_child, sync_parent = child.sync_engine, parent.sync_engine
    sync_child.dispatch = sync_child.dispatch._join(sync_parent.dispatch)
    sync_child._has_events = True  # listeners may arrive after the engine's connections exist


# Set by `observability.configure_tracing` when spans are recorded: statements sent on the raw
# driver (below) get a client span each, as SQLAlchemy's own statements do.
_raw_tracer: Any = None


def trace_raw_statements(tracer: Any) -> None:
    global _raw_tracer
    _raw_tracer = tracer


class _TracedDriver:
    """The asyncpg connection, with one client span per statement."""

    def __init__(self, driver: Any, tracer: Any) -> None:
        self._driver = driver
        self._tracer = tracer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._driver, name)

    async def _run(self, method: str, query: str, *args: Any, **kwargs: Any) -> Any:
        from opentelemetry.trace import SpanKind

        verb = (query.split(None, 1) or ["SQL"])[0].upper()
        attributes = {"db.system": "postgresql", "db.statement": query}
        with self._tracer.start_as_current_span(verb, kind=SpanKind.CLIENT, attributes=attributes):
            return await getattr(self._driver, method)(query, *args, **kwargs)

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._run("execute", query, *args, **kwargs)

    async def executemany(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._run("executemany", query, *args, **kwargs)

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._run("fetch", query, *args, **kwargs)

    async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._run("fetchrow", query, *args, **kwargs)

    async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._run("fetchval", query, *args, **kwargs)


_LOCK_BY_NAME = text("SELECT pg_advisory_xact_lock(hashtextextended(:name, 0))")


async def lock_by_name(session: AsyncSession, name: str) -> None:
    """Take the transaction-scoped advisory lock named `name` (held until commit or rollback): what
    serialises work no row lock covers, such as a limit counted over rows that do not exist yet.
    `run_idempotent(lock=name)` takes the same lock in the statement that claims its key."""
    await session.execute(_LOCK_BY_NAME, {"name": name})


async def raw_connection(session: AsyncSession) -> Any:
    """The asyncpg connection under a session, inside the session's transaction. For hot statements
    only: SQLAlchemy's parameter and result processing would double their client cost."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    # SQLAlchemy's asyncpg adapter sends BEGIN lazily, with its first statement: before one ran, the
    # driver is outside any transaction and a raw statement would commit on its own (surviving the
    # session's rollback). Begin it here as the adapter would, so that its COMMIT/ROLLBACK end it.
    adapter: Any = raw.dbapi_connection
    if getattr(adapter, "_transaction", True) is None:
        await adapter._start_transaction()
    driver = raw.driver_connection
    assert driver is not None
    return driver if _raw_tracer is None else _TracedDriver(driver, _raw_tracer)


def to_driver_dsn(url: str) -> str:
    """The database URL as asyncpg itself takes it (without SQLAlchemy's `+asyncpg`)."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def to_asyncpg_url(url: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url
