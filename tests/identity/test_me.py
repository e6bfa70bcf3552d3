"""GET/PATCH /v1/me: the member's own profile; fields they must not set are refused."""

from __future__ import annotations

import uuid

import httpx
import pytest

from referloop.runtime import Runtime
from tests.factories import db_rows, register_member


class TestMe:
    async def test_get_me(self, client: httpx.AsyncClient) -> None:
        m = await register_member(client)
        r = await client.get("/v1/me", headers=m.auth)
        assert r.status_code == 200
        body = r.json()
        assert body["id"] == m.id
        assert body["locale"] == "en"
        assert body["timezone"] == "UTC"
        assert body["kyc_status"] == "none"
        assert body["level"] == 1
        assert body["totp_enabled"] is False
        assert "password_hash" not in body
        assert "totp_secret" not in body

    async def test_needs_a_token(self, client: httpx.AsyncClient) -> None:
        r = await client.get("/v1/me")
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"

    async def test_patch_changes_the_allowed_fields(self, client: httpx.AsyncClient) -> None:
        m = await register_member(client)
        r = await client.patch(
            "/v1/me",
            headers=m.auth,
            json={
                "display_name": "Asha R",
                "locale": "hi-IN",
                "country": "in",
                "timezone": "Asia/Kolkata",
                "preferred_currency": "inr",
            },
        )
        assert r.status_code == 200, r.text
        me = (await client.get("/v1/me", headers=m.auth)).json()
        assert (
            me["display_name"],
            me["locale"],
            me["country"],
            me["timezone"],
            me["preferred_currency"],
        ) == ("Asha R", "hi-IN", "IN", "Asia/Kolkata", "INR")

    async def test_patch_leaves_unsent_fields_alone(self, client: httpx.AsyncClient) -> None:
        m = await register_member(client)
        await client.patch("/v1/me", headers=m.auth, json={"country": "IN", "timezone": "Asia/Kolkata"})
        r = await client.patch("/v1/me", headers=m.auth, json={"display_name": "Only the name"})
        assert r.status_code == 200
        assert (r.json()["country"], r.json()["timezone"]) == ("IN", "Asia/Kolkata")

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("role", "admin"),
            ("role", "member"),
            ("kyc_status", "verified"),
            ("level", 5),
            ("referral_code", "AAAAAAAA"),
            ("email_verified", True),
            ("phone_verified", True),
            ("email", "new@example.com"),
            ("totp_enabled", True),
            ("id", "01900000-0000-7000-8000-000000000000"),
            ("balance", {"amount": 100000, "currency": "INR"}),
        ],
    )
    async def test_forbidden_fields_are_refused_and_nothing_changes(
        self, client: httpx.AsyncClient, field: str, value: object
    ) -> None:
        m = await register_member(client)
        before = (await client.get("/v1/me", headers=m.auth)).json()
        # Mixed with an allowed field: the whole request is refused, not half-applied.
        r = await client.patch("/v1/me", headers=m.auth, json={"display_name": "Sneaky", field: value})
        assert r.status_code == 422
        assert r.headers["content-type"] == "application/problem+json"
        assert [e["field"] for e in r.json()["errors"]] == [field]
        assert (await client.get("/v1/me", headers=m.auth)).json() == before

    @pytest.mark.parametrize(
        "body",
        [
            {"timezone": "Mars/Olympus"},
            {"country": "IND"},
            {"preferred_currency": "RUPEES"},
            {"locale": "english"},
            {"display_name": ""},
            {"display_name": "x" * 81},
        ],
    )
    async def test_bad_values_are_refused(self, client: httpx.AsyncClient, body: dict[str, object]) -> None:
        m = await register_member(client)
        before = (await client.get("/v1/me", headers=m.auth)).json()
        r = await client.patch("/v1/me", headers=m.auth, json=body)
        assert r.status_code == 422
        assert (await client.get("/v1/me", headers=m.auth)).json() == before

    async def test_required_fields_cannot_be_cleared(self, client: httpx.AsyncClient) -> None:
        m = await register_member(client)
        before = (await client.get("/v1/me", headers=m.auth)).json()
        r = await client.patch("/v1/me", headers=m.auth, json={"display_name": None})
        assert r.status_code == 422
        assert (await client.get("/v1/me", headers=m.auth)).json() == before

    async def test_optional_fields_can_be_cleared(self, client: httpx.AsyncClient) -> None:
        m = await register_member(client)
        await client.patch("/v1/me", headers=m.auth, json={"country": "IN"})
        r = await client.patch("/v1/me", headers=m.auth, json={"country": None})
        assert r.status_code == 200
        assert r.json()["country"] is None


async def test_a_deleted_account_is_not_found_with_a_live_session(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    m = await register_member(client)
    await db_rows(runtime, "UPDATE users SET deleted_at = now() WHERE id = :u", u=m.id)
    r = await client.get("/v1/me", headers=m.auth)
    assert r.status_code == 404
    assert r.json()["code"] == "not_found"


async def test_a_session_of_another_member_is_refused(client: httpx.AsyncClient, runtime: Runtime) -> None:
    """The profile's own session check matches the session to the token's member, not just its id."""
    a, b = await register_member(client), await register_member(client)
    forged = runtime.signer.issue(
        user_id=uuid.UUID(a.id), session_id=uuid.UUID(b.session_id), role="member", mfa=False
    )[0]
    r = await client.get("/v1/me", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401
    assert r.json()["code"] == "invalid_token"
