"""The read session type is read-only in PostgreSQL itself, and GET routes take it.

A write through a read session must fail loudly (it would fail on a replica anyway), and a GET route
that takes the write session must say why, in the allow-list below."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy import insert, select, text
from sqlalchemy.exc import DBAPIError

from referloop.core.deps import _read_session, _write_session
from referloop.core.outbox.models import OutboxEvent
from referloop.runtime import Runtime
from tests.factories import register_member

# GET routes that do not take the read session, and why. Every other GET route must take it.
NOT_ON_THE_READ_SESSION: dict[str, str] = {
    # No database session at all.
    "/healthz": "process liveness only",
    "/readyz": "probes PostgreSQL, Redis and the broker with connections of its own",
    "/metrics": "outbox figures through a short session of its own; answers while the database is down",
    "/.well-known/jwks.json": "public keys held in memory",
    "/r/{slug}": "the hot redirect answers from Redis and records the click there",
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


def _dependency_calls(dependant: Dependant) -> set[Callable[..., Any]]:
    calls: set[Callable[..., Any]] = set()
    stack = [dependant]
    while stack:
        d = stack.pop()
        if d.call is not None:
            calls.add(d.call)
        stack.extend(d.dependencies)
    return calls


def _get_routes(app: FastAPI) -> dict[str, set[Callable[..., Any]]]:
    """Path of every GET route (included routers flattened) -> every dependency it runs."""
    routes: dict[str, set[Callable[..., Any]]] = {}
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, APIRoute) and "GET" in (route.methods or ()):
            assert route.path is not None
            routes[route.path] = _dependency_calls(route.dependant)
    return routes


def test_every_get_route_takes_the_read_session_unless_listed(app: FastAPI) -> None:
    routes = _get_routes(app)
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
