"""The HTTP edge: request ids, security headers on every answer, CORS from the allow-list."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from fastapi import FastAPI

from tests.factories import asgi_client, register_member

ORIGIN = "https://app.referloop.test"

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "strict-transport-security": "max-age=63072000; includeSubDomains",
    "cross-origin-opener-policy": "same-origin",
}


def assert_secure(r: httpx.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert r.headers.get(name) == value, (name, r.request.method, r.request.url)
    assert "content-security-policy" in r.headers


class TestRequestId:
    async def test_a_given_request_id_is_echoed(self, client: httpx.AsyncClient) -> None:
        r = await client.get("/healthz", headers={"X-Request-ID": "mobile-7f3a.42:retry-1"})
        assert r.headers["x-request-id"] == "mobile-7f3a.42:retry-1"

    async def test_a_missing_request_id_is_generated_per_request(self, client: httpx.AsyncClient) -> None:
        first = (await client.get("/healthz")).headers["x-request-id"]
        second = (await client.get("/healthz")).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", first)
        assert first != second

    @pytest.mark.parametrize("bad", ["has spaces in it", "x" * 129, "inject\u00e9".encode("latin-1"), "a,b"])
    async def test_an_unsafe_request_id_is_replaced(
        self, client: httpx.AsyncClient, bad: str | bytes
    ) -> None:
        r = await client.get("/healthz", headers={"X-Request-ID": bad})
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])

    async def test_error_answers_carry_it_too(self, client: httpx.AsyncClient) -> None:
        r = await client.get("/v1/me", headers={"X-Request-ID": "rid-401"})
        assert r.status_code == 401
        assert r.headers["x-request-id"] == "rid-401"
        assert r.json()["request_id"] == "rid-401"


class TestSecurityHeaders:
    async def test_on_success_and_on_errors(self, client: httpx.AsyncClient) -> None:
        member = await register_member(client)
        for r in (
            await client.get("/v1/me", headers=member.auth),
            await client.get("/v1/nowhere"),
            await client.delete("/healthz"),
            await client.post("/v1/auth/login", json={}),
            await client.get("/v1/me"),
        ):
            assert_secure(r)
            assert r.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"

    async def test_api_answers_are_not_cached_but_public_keys_are(self, client: httpx.AsyncClient) -> None:
        member = await register_member(client)
        assert (await client.get("/v1/me", headers=member.auth)).headers["cache-control"] == "no-store"
        jwks = await client.get("/.well-known/jwks.json")
        assert jwks.headers.get_list("cache-control") == ["public, max-age=300"]

    async def test_docs_get_a_csp_that_lets_them_load(self, client: httpx.AsyncClient) -> None:
        r = await client.get("/docs")
        assert r.status_code == 200
        assert_secure(r)
        assert "script-src" in r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


@pytest.fixture
async def cors_client(app_factory: Callable[..., FastAPI]) -> AsyncIterator[httpx.AsyncClient]:
    app = app_factory(cors_allow_origins=[ORIGIN])
    async with asgi_client(app) as c:
        yield c


class TestCors:
    async def test_preflight_from_an_allowed_origin(self, cors_client: httpx.AsyncClient) -> None:
        r = await cors_client.options(
            "/v1/me",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "PATCH",
                "Access-Control-Request-Headers": "authorization, content-type, x-request-id",
            },
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == ORIGIN
        assert "PATCH" in r.headers["access-control-allow-methods"]
        allowed = r.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed and "x-request-id" in allowed
        assert "access-control-allow-credentials" not in r.headers  # bearer tokens, no cookies
        assert_secure(r)
        assert r.headers["x-request-id"]

    async def test_simple_request_from_an_allowed_origin_exposes_the_request_id(
        self, cors_client: httpx.AsyncClient
    ) -> None:
        r = await cors_client.get("/healthz", headers={"Origin": ORIGIN})
        assert r.headers["access-control-allow-origin"] == ORIGIN
        exposed = r.headers["access-control-expose-headers"].lower()
        assert "x-request-id" in exposed and "retry-after" in exposed

    async def test_other_origins_get_no_cors_grant(self, cors_client: httpx.AsyncClient) -> None:
        evil = "https://evil.example"
        pre = await cors_client.options(
            "/v1/me", headers={"Origin": evil, "Access-Control-Request-Method": "GET"}
        )
        assert pre.status_code == 400
        assert "access-control-allow-origin" not in pre.headers
        r = await cors_client.get("/healthz", headers={"Origin": evil})
        assert r.status_code == 200
        assert "access-control-allow-origin" not in r.headers

    async def test_no_allow_list_means_no_cors_at_all(self, client: httpx.AsyncClient) -> None:
        r = await client.get("/healthz", headers={"Origin": ORIGIN})
        assert "access-control-allow-origin" not in r.headers


async def test_a_forwarded_address_that_is_not_an_ip_is_ignored():
    from starlette.requests import Request

    from referloop.core.deps import client_ip

    def request(forwarded: str) -> Request:
        return Request(
            {
                "type": "http",
                "headers": [(b"x-forwarded-for", forwarded.encode())],
                "client": ("192.0.2.7", 1234),
                "method": "GET",
                "path": "/",
            }
        )

    assert client_ip(request("203.0.113.9"), 1) == "203.0.113.9"
    assert client_ip(request("2001:db8::1"), 1) == "2001:db8::1"
    assert client_ip(request("<script>" * 20), 1) == "192.0.2.7"
    assert client_ip(request("203.0.113.9"), 0) == "192.0.2.7"


async def test_redis_bursts_beyond_the_pool_wait_instead_of_failing(redis_url):
    import asyncio

    from referloop.core.redis import create_redis

    redis = create_redis(redis_url, max_connections=5)
    try:
        answers = await asyncio.gather(*[redis.blpop(f"empty:{i}", timeout=0.1) for i in range(25)])
    finally:
        await redis.aclose()
    assert answers == [None] * 25
