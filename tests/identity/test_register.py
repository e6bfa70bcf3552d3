"""POST /v1/auth/register: normalization, referral codes, password rules, duplicates, strict input."""

from __future__ import annotations

import re
import uuid

import httpx

from referloop.runtime import Runtime
from tests.factories import (
    DEFAULT_PASSWORD,
    db_rows,
    db_value,
    latest_code,
    new_email,
    new_phone,
    register_member,
)

CROCKFORD_CODE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{8}$")


def _spaced(phone: str) -> str:
    """+919876543210 written the way people type it: +91 98765-43210."""
    return f"{phone[:3]} {phone[3:8]}-{phone[8:]}"


async def _users_with(rt: Runtime, email: str | None = None, phone: str | None = None) -> int:
    count: int = await db_value(
        rt, "SELECT count(*) FROM users WHERE email = :e OR phone = :p", e=email or "-", p=phone or "-"
    )
    return count


class TestRegister:
    async def test_email_and_phone_are_normalized_and_tokens_work(self, client: httpx.AsyncClient) -> None:
        local = uuid.uuid4().hex[:12]
        phone = new_phone()
        r = await client.post(
            "/v1/auth/register",
            json={
                "email": f"  Asha.{local}@Example.COM ",
                "phone": _spaced(phone),
                "password": DEFAULT_PASSWORD,
                "display_name": "Asha",
            },
        )
        assert r.status_code == 201, r.text
        tokens = r.json()
        assert tokens["token_type"] == "Bearer"
        assert tokens["expires_in"] == 15 * 60
        assert tokens["refresh_token"].startswith("rt_")

        me = await client.get("/v1/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
        assert me.status_code == 200
        body = me.json()
        assert body["email"] == f"asha.{local}@example.com"
        assert body["phone"] == phone
        assert body["role"] == "member"
        assert body["email_verified"] is False
        assert body["phone_verified"] is False

    async def test_login_accepts_the_normalized_forms(self, client: httpx.AsyncClient) -> None:
        phone = new_phone()
        m = await register_member(client, phone=phone)
        assert m.email
        for login in (m.email.upper(), _spaced(phone)):
            r = await client.post("/v1/auth/login", json={"login": login, "password": m.password})
            assert r.status_code == 200, (login, r.text)

    async def test_phone_only_account(self, client: httpx.AsyncClient) -> None:
        phone = new_phone()
        m = await register_member(client, email=None, phone=phone)
        me = (await client.get("/v1/me", headers=m.auth)).json()
        assert me["email"] is None
        assert me["phone"] == phone

    async def test_a_verification_code_is_emailed_at_sign_up(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        m = await register_member(client)
        assert m.email
        assert re.fullmatch(r"\d{6}", await latest_code(runtime, m.email))

    async def test_every_member_gets_a_unique_crockford_referral_code(
        self, client: httpx.AsyncClient
    ) -> None:
        codes = set()
        for _ in range(5):
            m = await register_member(client)
            code = (await client.get("/v1/me", headers=m.auth)).json()["referral_code"]
            assert CROCKFORD_CODE.match(code), code
            codes.add(code)
        assert len(codes) == 5

    async def test_the_inviters_referral_code_is_stored_normalized(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        inviter = await register_member(client)
        code = (await client.get("/v1/me", headers=inviter.auth)).json()["referral_code"]
        # Crockford is case-insensitive and ignores hyphens.
        typed = f"{code[:4].lower()}-{code[4:].lower()}"
        m = await register_member(client, referral_code=typed)
        stored = await db_value(runtime, "SELECT invited_with_code FROM users WHERE id = :id", id=m.id)
        assert stored == code
        events = await db_rows(
            runtime,
            "SELECT payload FROM outbox_events WHERE topic = 'identity.user_registered' "
            "AND payload->>'user_id' = :id",
            id=m.id,
        )
        assert [e["payload"]["invited_with_code"] for e in events] == [code]


class TestPasswordRules:
    async def test_short_password_is_refused_and_nothing_is_written(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        email = new_email()
        r = await client.post(
            "/v1/auth/register",
            json={
                "email": email,
                "password": "nine-char",
                "display_name": "X",
            },
        )
        assert r.status_code == 422
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "weak_password"
        assert await _users_with(runtime, email=email) == 0
        assert (
            await db_value(
                runtime,
                "SELECT count(*) FROM audit_log WHERE action = 'auth.register' AND after->>'email' = :e",
                e=email,
            )
            == 0
        )
        assert (
            await db_value(runtime, "SELECT count(*) FROM outbox_events WHERE payload->>'to' = :e", e=email)
            == 0
        )

    async def test_common_password_is_refused_whatever_its_case(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        for password in ("qwertyuiop", "1234567890", "QwertyUIOP"):
            email = new_email()
            r = await client.post(
                "/v1/auth/register",
                json={
                    "email": email,
                    "password": password,
                    "display_name": "X",
                },
            )
            assert r.status_code == 422, password
            assert r.json()["code"] == "weak_password"
            assert "common" in r.json()["detail"]
            assert await _users_with(runtime, email=email) == 0

    async def test_ten_characters_are_enough(self, client: httpx.AsyncClient) -> None:
        await register_member(client, password="zq8-vk3-wp")


class TestDuplicates:
    async def test_taken_email_or_phone_get_the_same_409(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        phone = new_phone()
        existing = await register_member(client, phone=phone)
        taken_email = await client.post(
            "/v1/auth/register",
            json={
                "email": existing.email.upper() if existing.email else None,
                "phone": new_phone(),
                "password": DEFAULT_PASSWORD,
                "display_name": "Copycat",
            },
        )
        taken_phone = await client.post(
            "/v1/auth/register",
            json={
                "email": new_email(),
                "phone": _spaced(phone),
                "password": DEFAULT_PASSWORD,
                "display_name": "Copycat",
            },
        )
        assert taken_email.status_code == taken_phone.status_code == 409

        def comparable(r: httpx.Response) -> dict[str, object]:
            return {k: v for k, v in r.json().items() if k != "request_id"}

        assert comparable(taken_email) == comparable(taken_phone)
        assert taken_email.json()["code"] == "account_exists"
        # Neither attempt wrote a second account.
        assert await _users_with(runtime, email=existing.email, phone=phone) == 1
        assert (
            await db_value(
                runtime,
                "SELECT count(*) FROM users WHERE display_name = 'Copycat' "
                "AND created_at > now() - interval '1 minute'",
            )
            == 0
        )

    async def test_concurrent_sign_ups_with_one_email_make_one_account(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        import asyncio

        email = new_email()
        body = {"email": email, "password": DEFAULT_PASSWORD, "display_name": "Twin"}
        results = await asyncio.gather(*(client.post("/v1/auth/register", json=body) for _ in range(3)))
        assert sorted(r.status_code for r in results) == [201, 409, 409]
        assert await _users_with(runtime, email=email) == 1


class TestStrictInput:
    async def test_unknown_fields_are_refused(self, client: httpx.AsyncClient, runtime: Runtime) -> None:
        email = new_email()
        for extra in ({"role": "admin"}, {"email_verified": True}, {"kyc_status": "verified"}):
            r = await client.post(
                "/v1/auth/register",
                json={
                    "email": email,
                    "password": DEFAULT_PASSWORD,
                    "display_name": "X",
                    **extra,
                },
            )
            assert r.status_code == 422, extra
            body = r.json()
            assert body["code"] == "validation_error"
            assert [e["field"] for e in body["errors"]] == list(extra)
        assert await _users_with(runtime, email=email) == 0

    async def test_email_or_phone_is_required_and_must_be_valid(self, client: httpx.AsyncClient) -> None:
        for body in (
            {"password": DEFAULT_PASSWORD, "display_name": "X"},
            {"email": "not-an-email", "password": DEFAULT_PASSWORD, "display_name": "X"},
            {"phone": "12345", "password": DEFAULT_PASSWORD, "display_name": "X"},
            {"email": new_email(), "password": DEFAULT_PASSWORD, "display_name": ""},
            {
                "email": new_email(),
                "password": DEFAULT_PASSWORD,
                "display_name": "X",
                "referral_code": "no spaces",
            },
        ):
            r = await client.post("/v1/auth/register", json=body)
            assert r.status_code == 422, body
            assert r.headers["content-type"] == "application/problem+json"
