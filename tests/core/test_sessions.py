"""The read session type is read-only in PostgreSQL itself, and GET routes take it.

A write through a read session must fail loudly (it would fail on a replica anyway), and a GET route
that takes the write session must say why, in the allow-list below."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import insert, select, text
from sqlalchemy.exc import DBAPIError

from referloop.core.deps import _read_session, _write_session
from referloop.core.outbox.models import OutboxEvent
from referloop.runtime import Runtime
from tests.factories import db_value, register_member
from tests.route_deps import route_dependencies

# GET routes that do not take the read session, and why. Every other GET route must take it.
NOT_ON_THE_READ_SESSION: dict[str, str] = {
    # No database session at all.
    "/healthz": "process liveness only",
    "/readyz": "probes PostgreSQL, Redis and the broker with connections of its own",
    "/metrics": "outbox figures through a short session of its own; answers while the database is down",
    "/.well-known/jwks.json": "public keys held in memory",
    "/r/{slug}": "the hot redirect answers from Redis and records the click there",
    "/v1/me": "one raw statement on a read-pool connection (Database.read_connection), no ORM session",
    "/v1/wallet/transactions.csv": "the CSV stream outlives the request, so it opens its own session",
    # They write: the request's transaction must hold the write.
    "/v1/referrals/links": "creates a member's missing share links and remembers the calling device",
    # Every partner API call updates its key's last use and is audited in the request's transaction
    # (CurrentPartner takes the write session), so reading through a second, read-only session would
    # only cost a second connection.
    "/partner/v1/me": "partner calls are audited (CurrentPartner)",
    "/partner/v1/referrals": "partner calls are audited (CurrentPartner)",
    "/partner/v1/referrals/{referral_id}": "partner calls are audited (CurrentPartner)",
    "/partner/v1/webhook-endpoints": "partner calls are audited (CurrentPartner)",
    "/partner/v1/webhook-endpoints/{endpoint_id}": "partner calls are audited (CurrentPartner)",
    "/partner/v1/webhook-endpoints/{endpoint_id}/deliveries": "partner calls are audited (CurrentPartner)",
    "/partner/v1/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}": (
        "partner calls are audited (CurrentPartner)"
    ),
}


def test_every_get_route_takes_the_read_session_unless_listed(app: FastAPI) -> None:
    routes = route_dependencies(app, "GET")
    assert len(routes) > 20  # the walk found the routers' routes, not only the app's own
    wrong = sorted(
        path
        for path, calls in routes.items()
        if _read_session not in calls and path not in NOT_ON_THE_READ_SESSION
    )
    assert wrong == [], f"GET routes without the read session (take ReadSession, or list why): {wrong}"
    mixed = sorted(
        path for path, calls in routes.items() if _read_session in calls and _write_session in calls
    )
    assert mixed == [], f"GET routes holding both sessions (two connections per request): {mixed}"
    stale = sorted(
        path for path in NOT_ON_THE_READ_SESSION if path not in routes or _read_session in routes[path]
    )
    assert stale == [], f"allow-list entries that are no longer needed: {stale}"


async def test_a_write_through_the_read_session_fails_and_writes_nothing(runtime: Runtime) -> None:
    topic = f"test.readonly.{uuid.uuid4().hex[:8]}"
    async with runtime.db.read_sessionmaker() as session:
        assert await session.scalar(text("SHOW transaction_read_only")) == "on"
        with pytest.raises(DBAPIError, match="read-only transaction"):
            await session.execute(insert(OutboxEvent).values(topic=topic, payload={}))
    # An explicit transaction on it is read-only too.
    async with runtime.db.read_sessionmaker() as session, session.begin():
        with pytest.raises(DBAPIError, match="read-only transaction"):
            await session.execute(text("CREATE TEMPORARY TABLE readonly_probe (x int)"))
    async with runtime.db.sessionmaker() as session:
        assert await session.scalar(text("SHOW transaction_read_only")) == "off"
        assert await session.scalar(select(OutboxEvent.id).where(OutboxEvent.topic == topic)) is None


async def test_read_routes_answer_through_the_read_only_pool(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    """A GET on the read session works end to end; the read pool is the one that served it."""
    member = await register_member(client)
    before = runtime.db.read_engine.pool.checkedin()  # type: ignore[attr-defined]
    r = await client.get("/v1/me", headers=member.auth)
    assert r.status_code == 200, r.text
    assert runtime.db.read_engine.pool.checkedin() >= max(before, 1)  # type: ignore[attr-defined]


async def test_the_read_connection_is_read_only_and_one_cancelled_mid_statement_is_closed(
    runtime: Runtime,
) -> None:
    async with runtime.db.read_connection() as conn:
        assert await conn.fetchval("SHOW transaction_read_only") == "on"
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute("CREATE TEMPORARY TABLE readonly_probe (x int)")

    backend: list[int] = []

    async def slow_read() -> None:
        async with runtime.db.read_connection() as conn:
            backend.append(await conn.fetchval("SELECT pg_backend_pid()"))
            await conn.fetchval("SELECT pg_sleep(30)")

    task = asyncio.create_task(slow_read())
    while not backend:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Its connection was not handed back to the pool (its protocol was mid-answer): it is closed.
    for _ in range(100):
        alive = await db_value(runtime, "SELECT count(*) FROM pg_stat_activity WHERE pid = :p", p=backend[0])
        if not alive:
            break
        await asyncio.sleep(0.05)
    assert alive == 0
    async with runtime.db.read_connection() as conn:
        assert await conn.fetchval("SELECT 1") == 1
