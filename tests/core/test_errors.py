"""Every error answer is RFC 9457 problem+json, including those the framework raises itself."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from referloop.core.deps import ReadSession
from referloop.core.errors import PROBLEM_JSON, Conflict
from referloop.core.observability import configure_logging
from tests.factories import register_member

PROBLEM_KEYS = {"type", "title", "status", "detail", "code", "instance", "request_id"}


def assert_problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = r.json()
    assert body.keys() >= PROBLEM_KEYS
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == f"https://referloop.dev/problems/{code}"
    assert body["instance"] == r.request.url.path
    assert body["request_id"] == r.headers["x-request-id"]
    return body


@pytest.fixture
async def boom_app(app_factory: Callable[..., FastAPI]) -> FastAPI:
    """An app with two extra routes: one that fails with a bug, one that raises a domain error."""
    app = app_factory()

    @app.get("/v1/test/boom")
    async def boom() -> None:
        raise RuntimeError("db password is hunter2 at /srv/secret.py")

    @app.get("/v1/test/db-bug")
    async def db_bug(session: ReadSession) -> None:
        await session.execute(text("SELECT 1 / 0"))

    @app.get("/v1/test/conflict")
    async def conflict() -> None:
        raise Conflict("That thing already exists.", thing="widget")

    return app


@pytest.fixture
async def boom_client(boom_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=boom_app), base_url="http://test") as c:
        yield c


@pytest.fixture
def log_lines(boom_app: FastAPI) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Swap the JSON log handler's stream for a buffer (after the app is built: create_app points it
    at stdout); the lines parse with json.loads."""
    buf = io.StringIO()
    configure_logging("INFO", stream=buf)
    yield lambda: [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]
    configure_logging("WARNING")


class TestFrameworkErrors:
    async def test_unknown_path_is_a_404_problem(self, client: httpx.AsyncClient) -> None:
        body = assert_problem(await client.get("/v1/no-such-thing"), 404, "not_found")
        assert body["title"] == "Not found"

    async def test_wrong_method_is_a_405_problem_with_allow(self, client: httpx.AsyncClient) -> None:
        r = await client.put("/v1/me", json={})
        assert_problem(r, 405, "method_not_allowed")
        assert set(r.headers["allow"].replace(" ", "").split(",")) == {"GET", "PATCH"}

    async def test_invalid_body_is_a_422_problem_per_field_without_echoing_input(
        self, client: httpx.AsyncClient
    ) -> None:
        r = await client.post(
            "/v1/auth/register",
            json={
                "email": "not-an-email",
                "password": "sekret-value-xyz",
                "display_name": "A",
                "role": "admin",
            },
        )
        body = assert_problem(r, 422, "validation_error")
        fields = {(e["location"], e["field"]) for e in body["errors"]}
        assert ("body", "email") in fields
        assert ("body", "role") in fields  # unknown fields are refused, not ignored
        assert all(e["message"] and e["type"] for e in body["errors"])
        assert "sekret-value-xyz" not in r.text

    async def test_malformed_json_is_a_422_problem(self, client: httpx.AsyncClient) -> None:
        r = await client.post(
            "/v1/auth/login",
            content=b'{"login": "x@example.com", ',
            headers={"content-type": "application/json"},
        )
        body = assert_problem(r, 422, "validation_error")
        assert body["errors"][0]["type"] == "json_invalid"

    async def test_invalid_path_parameter_is_a_422_problem(self, client: httpx.AsyncClient) -> None:
        member = await register_member(client)
        r = await client.delete("/v1/auth/sessions/not-a-uuid", headers=member.auth)
        body = assert_problem(r, 422, "validation_error")
        assert body["errors"][0]["location"] == "path"
        assert body["errors"][0]["field"] == "session_id"

    async def test_missing_token_is_a_401_problem(self, client: httpx.AsyncClient) -> None:
        r = await client.get("/v1/me")
        assert_problem(r, 401, "invalid_token")
        assert r.headers["www-authenticate"] == "Bearer"


class TestUnstorableText:
    """PostgreSQL cannot store a NUL character; sent anywhere, it is bad input, never a 500."""

    @pytest.mark.parametrize(
        ("path", "params", "location"),
        [("/v1/me", {"q": "a\x00b"}, "query"), ("/v1/auth/sessions/a%00b", None, "path")],
    )
    async def test_in_the_url(
        self, client: httpx.AsyncClient, path: str, params: dict[str, str] | None, location: str
    ) -> None:
        r = await client.get(path, params=params)
        body = assert_problem(r, 422, "validation_error")
        assert body["errors"][0]["location"] == location
        assert body["errors"][0]["type"] == "string_nul"

    async def test_in_a_json_body_nothing_is_written(self, client: httpx.AsyncClient) -> None:
        member = await register_member(client)
        r = await client.patch("/v1/me", headers=member.auth, json={"display_name": "Asha\u0000Rao"})
        body = assert_problem(r, 422, "validation_error")
        assert body["errors"][0]["type"] == "string_nul"
        me = await client.get("/v1/me", headers=member.auth)
        assert me.json()["display_name"] == "Test Member"


class TestDomainErrors:
    async def test_app_error_renders_its_code_and_extension_members(
        self, boom_client: httpx.AsyncClient
    ) -> None:
        body = assert_problem(await boom_client.get("/v1/test/conflict"), 409, "conflict")
        assert body["detail"] == "That thing already exists."
        assert body["thing"] == "widget"

    async def test_a_404_for_a_missing_row_is_a_problem(self, client: httpx.AsyncClient) -> None:
        member = await register_member(client)
        r = await client.delete(f"/v1/auth/sessions/{uuid.uuid4()}", headers=member.auth)
        assert_problem(r, 404, "not_found")
        # the member's own session is untouched
        assert (await client.get("/v1/me", headers=member.auth)).status_code == 200


class TestInternalError:
    async def test_a_bug_answers_500_with_request_id_and_no_trace(
        self, boom_client: httpx.AsyncClient, log_lines: Callable[[], list[dict[str, Any]]]
    ) -> None:
        r = await boom_client.get("/v1/test/boom", headers={"X-Request-ID": "req-500-check"})
        body = assert_problem(r, 500, "internal_error")
        assert body["request_id"] == "req-500-check"
        for leak in ("Traceback", "RuntimeError", "hunter2", "secret.py", ".py"):
            assert leak not in r.text
        assert r.headers["x-content-type-options"] == "nosniff"
        # The cause is logged, with the request id, for whoever is on call.
        errors = [line for line in log_lines() if line.get("event") == "unhandled_error"]
        assert len(errors) == 1
        assert errors[0]["request_id"] == "req-500-check"
        assert "RuntimeError: db password is hunter2" in errors[0]["exception"]

    async def test_a_database_error_that_is_not_bad_text_stays_a_500(
        self, boom_client: httpx.AsyncClient
    ) -> None:
        r = await boom_client.get("/v1/test/db-bug")
        assert_problem(r, 500, "internal_error")
        assert "division" not in r.text

    async def test_a_bug_is_counted_as_a_500_of_its_route(
        self, boom_app: FastAPI, boom_client: httpx.AsyncClient
    ) -> None:
        await boom_client.get("/v1/test/boom")
        value = boom_app.state.runtime.metrics.registry.get_sample_value(
            "referloop_http_requests_total", {"method": "GET", "route": "/v1/test/boom", "status": "500"}
        )
        assert value == 1


class TestDocumentedErrors:
    async def test_every_error_response_in_the_spec_is_a_problem(self, client: httpx.AsyncClient) -> None:
        spec = (await client.get("/openapi.json")).json()
        assert "HTTPValidationError" not in json.dumps(spec)
        assert {"Problem", "FieldError"} <= spec["components"]["schemas"].keys()
        for path, operations in spec["paths"].items():
            for method, op in operations.items():
                assert "422" in op["responses"] and "500" in op["responses"], (method, path)
                for status, response in op["responses"].items():
                    if int(status) >= 400:
                        content = response["content"]
                        assert list(content) == [PROBLEM_JSON], (method, path, status)
                        ref = content[PROBLEM_JSON]["schema"]["$ref"]
                        assert ref.rsplit("/", 1)[-1] in {"Problem", "NotReady"}, (method, path, status)


def test_an_error_cannot_reuse_a_problem_field_name() -> None:
    # `status` as an extra would collide with the problem body's own member when rendered (a 500):
    # the mistake surfaces where the error is made instead.
    from referloop.core.errors import Conflict

    with pytest.raises(TypeError, match="status"):
        Conflict("nope", status="active")
    assert Conflict("fine", state="active").extra == {"state": "active"}
