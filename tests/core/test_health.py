"""Liveness, readiness (naming the dependency that failed) and the Prometheus exposition."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from sqlalchemy import delete

from referloop.app import create_app
from referloop.config import Settings
from referloop.core.errors import PROBLEM_JSON
from referloop.core.outbox.models import OutboxEvent
from referloop.runtime import Runtime
from tests.conftest import make_settings
from tests.factories import register_member

ClientFor = Callable[..., Awaitable[httpx.AsyncClient]]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def client_for(settings: Settings, tmp_var: Path) -> AsyncIterator[ClientFor]:
    """A client of a fresh app whose runtime may point at other service URLs."""
    opened: list[tuple[Runtime, httpx.AsyncClient]] = []

    async def build(
        *, database_url: str = settings.database_url, redis_url: str = settings.redis_url, **overrides: object
    ) -> httpx.AsyncClient:
        rt = Runtime.build(make_settings(database_url, redis_url, tmp_var, **overrides))
        transport = httpx.ASGITransport(app=create_app(rt.settings, runtime=rt))
        c = httpx.AsyncClient(transport=transport, base_url="http://test")
        opened.append((rt, c))
        return c

    yield build
    for rt, c in opened:
        await c.aclose()
        await rt.close()


def samples(text: str, name: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]


def value(text: str, name: str, **labels: str) -> float | None:
    for s in samples(text, name):
        if all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


class TestHealth:
    async def test_healthz_answers_without_touching_dependencies(self, client_for: ClientFor) -> None:
        c = await client_for(redis_url=f"redis://127.0.0.1:{closed_port()}/0")
        r = await c.get("/healthz")
        assert r.status_code == 200
        assert r.json() == {"status": "ok"}

    async def test_ready_when_postgres_and_redis_answer(self, client: httpx.AsyncClient) -> None:
        r = await client.get("/readyz")
        assert r.status_code == 200
        assert r.json() == {
            "status": "ok",
            "checks": {"postgres": "ok", "redis": "ok", "broker": "not configured"},
        }

    async def test_ready_with_a_reachable_broker(self, client_for: ClientFor, amqp_url: str) -> None:
        c = await client_for(amqp_url=amqp_url)
        r = await c.get("/readyz")
        assert r.status_code == 200
        assert r.json()["checks"] == {"postgres": "ok", "redis": "ok", "broker": "ok"}

    async def test_redis_down_is_503_naming_redis(self, client_for: ClientFor) -> None:
        c = await client_for(redis_url=f"redis://127.0.0.1:{closed_port()}/0")
        r = await c.get("/readyz")
        assert r.status_code == 503
        assert r.headers["content-type"] == PROBLEM_JSON
        body = r.json()
        assert body["code"] == "not_ready"
        assert body["failed"] == ["redis"]
        assert body["checks"]["postgres"] == "ok"
        assert body["checks"]["redis"].startswith("failed: ")
        assert "redis" in body["detail"]

    async def test_broker_down_is_503_naming_the_broker(self, client_for: ClientFor) -> None:
        c = await client_for(amqp_url=f"amqp://guest:guest@127.0.0.1:{closed_port()}/")
        r = await c.get("/readyz")
        assert r.status_code == 503
        body = r.json()
        assert body["failed"] == ["broker"]
        assert body["checks"]["postgres"] == body["checks"]["redis"] == "ok"

    async def test_postgres_down_is_503_naming_postgres(self, client_for: ClientFor) -> None:
        c = await client_for(database_url=f"postgresql://root@127.0.0.1:{closed_port()}/nowhere")
        r = await c.get("/readyz")
        assert r.status_code == 503
        assert r.json()["failed"] == ["postgres"]


class TestMetrics:
    async def test_requests_are_counted_per_route_template_and_status(
        self, client: httpx.AsyncClient, app: FastAPI
    ) -> None:
        member = await register_member(client)
        route = "/v1/auth/sessions/{session_id}"
        before = (
            value(
                (await client.get("/metrics")).text,
                "referloop_http_requests_total",
                method="DELETE",
                route=route,
                status="404",
            )
            or 0
        )
        for _ in range(3):
            r = await client.delete(f"/v1/auth/sessions/{uuid.uuid4()}", headers=member.auth)
            assert r.status_code == 404
        r = await client.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain; version=")
        text = r.text
        assert (
            value(text, "referloop_http_requests_total", method="DELETE", route=route, status="404")
            == before + 3
        )
        # concrete paths never become labels
        assert not any(
            "/v1/auth/sessions/0" in s.labels.get("route", "")
            for s in samples(text, "referloop_http_requests_total")
        )
        # a latency histogram with the same labels
        count = value(
            text, "referloop_http_request_duration_seconds_count", method="DELETE", route=route, status="404"
        )
        assert count == before + 3
        buckets = [
            s
            for s in samples(text, "referloop_http_request_duration_seconds_bucket")
            if s.labels["route"] == route and s.labels["status"] == "404"
        ]
        assert {s.labels["le"] for s in buckets} >= {"0.005", "0.1", "1.0", "+Inf"}
        assert max(s.value for s in buckets) == before + 3
        # unmatched paths share one label, so scanners cannot blow up the series count
        await client.get(f"/wp-admin/{uuid.uuid4()}")
        text = (await client.get("/metrics")).text
        assert value(text, "referloop_http_requests_total", method="GET", route="unmatched", status="404")

    async def test_route_labels_are_the_full_templates(self, app: FastAPI) -> None:
        # The middleware labels a request with its route's own path; that is the full template only
        # while routers carry their prefix themselves (APIRouter(prefix=...), not include_router(prefix=...)).
        for ctx in iter_route_contexts(app.router.routes):
            if isinstance(ctx.original_route, APIRoute):
                assert ctx.original_route.path == ctx.path, ctx.path

    async def test_outbox_backlog_and_age(self, client: httpx.AsyncClient, runtime: Runtime) -> None:
        hour_ago = datetime.now(UTC) - timedelta(hours=1)
        event_id = uuid.uuid4()
        async with runtime.db.sessionmaker() as session:
            # Due in the future so that no relay publishes it while the test looks.
            session.add(
                OutboxEvent(
                    id=event_id,
                    topic="test.metrics",
                    payload={},
                    created_at=hour_ago,
                    available_at=datetime.now(UTC) + timedelta(days=1),
                )
            )
            await session.commit()
        try:
            text = (await client.get("/metrics")).text
            assert (value(text, "referloop_outbox_backlog") or 0) >= 1
            assert (value(text, "referloop_outbox_oldest_age_seconds") or 0) >= 3600
            assert value(text, "referloop_outbox_dead_letters") is not None
        finally:
            async with runtime.db.sessionmaker() as session:
                await session.execute(delete(OutboxEvent).where(OutboxEvent.id == event_id))
                await session.commit()

    async def test_db_pool_use(self, client: httpx.AsyncClient, runtime: Runtime) -> None:
        async with runtime.db.engine.connect() as held, runtime.db.read_engine.connect() as read:
            await held.exec_driver_sql("SELECT 1")
            await read.exec_driver_sql("SELECT 1")
            text = (await client.get("/metrics")).text
            assert (value(text, "referloop_db_pool_connections_in_use", pool="write") or 0) >= 1
            assert (value(text, "referloop_db_pool_connections_in_use", pool="read") or 0) >= 1
        assert value(text, "referloop_db_pool_size", pool="write") == runtime.settings.db_pool_size
        assert value(text, "referloop_db_pool_size", pool="read") == runtime.settings.db_read_pool_size
