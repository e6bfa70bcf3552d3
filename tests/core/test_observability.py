"""Traces cover a request's route, SQL and Redis calls in one tree; logs are JSON lines with the
request id."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from referloop.core.observability import configure_logging
from tests.factories import asgi_client, register_member


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The SDK's in-memory exporter on the process's tracer provider (installed here if none is)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        trace.set_tracer_provider(TracerProvider())
        provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()  # later spans of this process are dropped, not hoarded


@pytest.fixture
async def traced_client(
    spans: InMemorySpanExporter, app_factory: Callable[..., FastAPI]
) -> AsyncIterator[httpx.AsyncClient]:
    app = app_factory()  # built after the provider exists, so it is instrumented
    async with asgi_client(app) as c:  # an address of its own: rate limits of other runs never apply
        yield c


def _ancestors(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[ReadableSpan]:
    chain = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        chain.append(span)
    return chain


class TestTracing:
    # /v1/me checks the session in its own raw statement (read pool, no ORM); the sessions list
    # checks it in Redis and reads through the ORM.
    @pytest.mark.parametrize(("path", "redis_expected"), [("/v1/me", False), ("/v1/auth/sessions", True)])
    async def test_one_request_is_one_tree_of_route_sql_and_redis(
        self, traced_client: httpx.AsyncClient, spans: InMemorySpanExporter, path: str, redis_expected: bool
    ) -> None:
        member = await register_member(traced_client)
        spans.clear()
        r = await traced_client.get(path, headers=member.auth)
        assert r.status_code == 200

        finished = list(spans.get_finished_spans())
        servers = [s for s in finished if s.kind is SpanKind.SERVER]
        assert len(servers) == 1
        root = servers[0]
        assert root.name == f"GET {path}"
        assert root.attributes is not None and root.attributes["http.route"] == path
        assert root.parent is None
        trace_id = root.context.trace_id
        assert all(s.context.trace_id == trace_id for s in finished), [s.name for s in finished]

        by_id = {s.context.span_id: s for s in finished}
        sql = [s for s in finished if (s.attributes or {}).get("db.system") == "postgresql"]
        redis = [s for s in finished if (s.attributes or {}).get("db.system") == "redis"]
        assert any("auth_sessions" in str((s.attributes or {}).get("db.statement", "")) for s in sql), [
            s.name for s in sql
        ]
        assert bool(redis) is redis_expected, [s.name for s in finished]
        for child in sql + redis:
            assert child.kind is SpanKind.CLIENT
            assert root in _ancestors(child, by_id), child.name

    async def test_probes_and_scrapes_are_not_traced(
        self, traced_client: httpx.AsyncClient, spans: InMemorySpanExporter
    ) -> None:
        spans.clear()
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await traced_client.get(path)).status_code == 200
        assert not [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]


Lines = Callable[[], list[dict[str, Any]]]


@pytest.fixture
async def logged(app_factory: Callable[..., FastAPI]) -> AsyncIterator[tuple[httpx.AsyncClient, Lines]]:
    """A client of an app with access logs on, and the JSON lines its process logs."""
    app = app_factory(access_log=True, log_level="INFO")

    @app.get("/v1/test/chatty")
    async def chatty() -> dict[str, str]:
        logging.getLogger("referloop.test").warning("stdlib line %s", "inside a request")
        structlog.get_logger("referloop.test").info("structlog line", detail=42)
        return {"ok": "yes"}

    buf = io.StringIO()
    configure_logging("INFO", stream=buf)  # after create_app, which points the handler at stdout
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        yield c, lambda: [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]
    configure_logging("WARNING")


class TestLogs:
    async def test_every_line_is_json_and_carries_the_request_id(
        self, logged: tuple[httpx.AsyncClient, Lines]
    ) -> None:
        client, lines = logged
        r = await client.get("/v1/test/chatty", headers={"X-Request-ID": "log-rid-1"})
        assert r.status_code == 200
        mine = [line for line in lines() if line.get("request_id") == "log-rid-1"]
        by_event = {line["event"]: line for line in mine}
        assert by_event["stdlib line inside a request"]["level"] == "warning"
        assert by_event["stdlib line inside a request"]["logger"] == "referloop.test"
        assert by_event["structlog line"]["detail"] == 42
        access = by_event["request"]
        assert access["route"] == "/v1/test/chatty"
        assert access["status"] == 200
        assert access["method"] == "GET"
        assert access["duration_ms"] >= 0
        assert access["timestamp"].endswith("Z")

    async def test_lines_of_different_requests_do_not_mix(
        self, logged: tuple[httpx.AsyncClient, Lines]
    ) -> None:
        client, lines = logged
        await client.get("/v1/test/chatty", headers={"X-Request-ID": "log-rid-a"})
        await client.get("/v1/test/chatty", headers={"X-Request-ID": "log-rid-b"})
        ids = [line.get("request_id") for line in lines() if line["event"] == "structlog line"]
        assert ids == ["log-rid-a", "log-rid-b"]
        # outside a request no id is invented
        structlog.get_logger("referloop.test").info("outside")
        assert "request_id" not in next(line for line in lines() if line["event"] == "outside")
