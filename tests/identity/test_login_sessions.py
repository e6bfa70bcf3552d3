"""Login, logout and the member's list of signed-in devices."""

from __future__ import annotations

import httpx
import pytest

from referloop.identity.service.sessions import REVOKED_KEY
from referloop.runtime import Runtime
from tests.factories import db_value, new_email, new_phone, register_member


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class TestLogin:
    async def test_by_email_and_by_phone(self, client: httpx.AsyncClient) -> None:
        phone = new_phone()
        m = await register_member(client, phone=phone)
        for login in (m.email, phone):
            r = await client.post("/v1/auth/login", json={"login": login, "password": m.password})
            assert r.status_code == 200, r.text
            me = await client.get("/v1/me", headers=bearer(r.json()["access_token"]))
            assert me.json()["id"] == m.id

    async def test_wrong_password_and_unknown_account_get_the_same_401(
        self, client: httpx.AsyncClient
    ) -> None:
        m = await register_member(client)
        wrong = await client.post("/v1/auth/login", json={"login": m.email, "password": "not-the-password"})
        unknown = await client.post("/v1/auth/login", json={"login": new_email(), "password": m.password})
        assert wrong.status_code == unknown.status_code == 401
        assert wrong.headers["content-type"] == "application/problem+json"
        assert wrong.json()["code"] == unknown.json()["code"] == "invalid_credentials"
        assert wrong.json()["detail"] == unknown.json()["detail"]

    async def test_a_failed_login_opens_no_session(self, client: httpx.AsyncClient, runtime: Runtime) -> None:
        m = await register_member(client)
        before = await db_value(runtime, "SELECT count(*) FROM auth_sessions WHERE user_id = :u", u=m.id)
        r = await client.post("/v1/auth/login", json={"login": m.email, "password": "not-the-password"})
        assert r.status_code == 401
        assert (
            await db_value(runtime, "SELECT count(*) FROM auth_sessions WHERE user_id = :u", u=m.id) == before
        )

    async def test_odd_client_headers_do_not_break_sign_in(self, client: httpx.AsyncClient) -> None:
        """A long forwarded address or user agent is stored cut short, never a 500."""
        email = new_email()
        odd = {"X-Forwarded-For": "a" * 300, "User-Agent": "u" * 5000}
        r = await client.post(
            "/v1/auth/register",
            headers=odd,
            json={"email": email, "password": "plum-orchard-42-lantern", "display_name": "X"},
        )
        assert r.status_code == 201, r.text
        r = await client.post(
            "/v1/auth/login", headers=odd, json={"login": email, "password": "wrong-one-here"}
        )
        assert r.status_code == 401
        r = await client.post(
            "/v1/auth/login", headers=odd, json={"login": email, "password": "plum-orchard-42-lantern"}
        )
        assert r.status_code == 200
        sessions = (await client.get("/v1/auth/sessions", headers=bearer(r.json()["access_token"]))).json()
        assert all(len(s["ip"]) <= 64 and len(s["user_agent"]) <= 512 for s in sessions["items"])

    async def test_unknown_fields_are_refused(self, client: httpx.AsyncClient) -> None:
        m = await register_member(client)
        r = await client.post(
            "/v1/auth/login", json={"login": m.email, "password": m.password, "role": "admin"}
        )
        assert r.status_code == 422


class TestLogout:
    async def test_logout_ends_the_access_and_the_refresh_token(self, client: httpx.AsyncClient) -> None:
        m = await register_member(client)
        r = await client.post("/v1/auth/logout", headers=m.auth)
        assert r.status_code == 204
        me = await client.get("/v1/me", headers=m.auth)
        assert me.status_code == 401
        assert me.headers["content-type"] == "application/problem+json"
        assert me.headers["www-authenticate"] == "Bearer"
        r = await client.post("/v1/auth/refresh", json={"refresh_token": m.refresh_token})
        assert r.status_code == 401

    async def test_logout_leaves_other_devices_signed_in(self, client: httpx.AsyncClient) -> None:
        m = await register_member(client)
        other = (await client.post("/v1/auth/login", json={"login": m.email, "password": m.password})).json()
        assert (await client.post("/v1/auth/logout", headers=m.auth)).status_code == 204
        assert (await client.get("/v1/me", headers=bearer(other["access_token"]))).status_code == 200

    @pytest.mark.parametrize("path", ["/v1/me", "/v1/auth/sessions", "/v1/wallet"])
    async def test_an_ended_session_is_refused_by_the_database_check_and_the_redis_check(
        self, client: httpx.AsyncClient, runtime: Runtime, path: str
    ) -> None:
        """/v1/me checks the session in its own query, other routes in Redis: both refuse it."""
        m = await register_member(client)
        assert (await client.get(path, headers=m.auth)).status_code == 200
        assert (await client.post("/v1/auth/logout", headers=m.auth)).status_code == 204
        after_logout = await client.get(path, headers=m.auth)
        assert after_logout.status_code == 401
        assert after_logout.json()["code"] == "invalid_token"
        assert after_logout.json()["detail"] == "This session has ended; sign in again."
        if path == "/v1/me":
            # The Redis mark gone (an evicted key): the database still knows the session ended ...
            await runtime.redis.delete(REVOKED_KEY.format(sid=m.session_id))
            assert (await client.get(path, headers=m.auth)).status_code == 401
        else:
            # ... and for the routes that check Redis, its mark alone is enough.
            fresh = await register_member(client)
            await runtime.redis.set(REVOKED_KEY.format(sid=fresh.session_id), b"1", ex=60)
            assert (await client.get(path, headers=fresh.auth)).status_code == 401

    async def test_logout_needs_a_token(self, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/auth/logout")
        assert r.status_code == 401


class TestSessions:
    async def test_lists_device_ip_and_last_use(self, app: object, client: httpx.AsyncClient) -> None:
        m = await register_member(client)
        phone_login = await client.post(
            "/v1/auth/login",
            json={"login": m.email, "password": m.password, "device_name": "Pixel 8"},
            headers={"X-Forwarded-For": "198.51.100.7", "User-Agent": "Referloop-Android/1.0"},
        )
        assert phone_login.status_code == 200
        r = await client.get("/v1/auth/sessions", headers=m.auth)
        assert r.status_code == 200
        items = {s["id"]: s for s in r.json()["items"]}
        assert set(items) == {m.session_id, phone_login.json()["session_id"]}
        current = items[m.session_id]
        assert current["current"] is True
        pixel = items[phone_login.json()["session_id"]]
        assert pixel["current"] is False
        assert pixel["device_name"] == "Pixel 8"
        assert pixel["ip"] == "198.51.100.7"
        assert pixel["user_agent"] == "Referloop-Android/1.0"
        assert pixel["last_used_at"] >= pixel["created_at"]

    async def test_refresh_updates_last_use(self, client: httpx.AsyncClient) -> None:
        m = await register_member(client)
        before = (await client.get("/v1/auth/sessions", headers=m.auth)).json()["items"][0]["last_used_at"]
        r = await client.post(
            "/v1/auth/refresh",
            json={"refresh_token": m.refresh_token},
            headers={"X-Forwarded-For": "203.0.113.9"},
        )
        assert r.status_code == 200
        after = (await client.get("/v1/auth/sessions", headers=bearer(r.json()["access_token"]))).json()[
            "items"
        ][0]
        assert after["last_used_at"] > before
        assert after["ip"] == "203.0.113.9"

    async def test_ending_a_session_cuts_its_access_token_at_once(self, client: httpx.AsyncClient) -> None:
        m = await register_member(client)
        other = (await client.post("/v1/auth/login", json={"login": m.email, "password": m.password})).json()
        assert (await client.get("/v1/me", headers=bearer(other["access_token"]))).status_code == 200

        r = await client.delete(f"/v1/auth/sessions/{other['session_id']}", headers=m.auth)
        assert r.status_code == 204
        # The access token has not expired, yet it stops working now.
        r = await client.get("/v1/me", headers=bearer(other["access_token"]))
        assert r.status_code == 401
        assert r.json()["code"] == "invalid_token"
        assert (
            await client.post("/v1/auth/refresh", json={"refresh_token": other["refresh_token"]})
        ).status_code == 401
        ids = [s["id"] for s in (await client.get("/v1/auth/sessions", headers=m.auth)).json()["items"]]
        assert ids == [m.session_id]

    async def test_cannot_end_someone_elses_session(self, client: httpx.AsyncClient) -> None:
        alice = await register_member(client)
        bob = await register_member(client)
        r = await client.delete(f"/v1/auth/sessions/{bob.session_id}", headers=alice.auth)
        assert r.status_code == 404
        assert (await client.get("/v1/me", headers=bob.auth)).status_code == 200

    async def test_bad_session_id_is_a_422(self, client: httpx.AsyncClient) -> None:
        m = await register_member(client)
        r = await client.delete("/v1/auth/sessions/not-a-uuid", headers=m.auth)
        assert r.status_code == 422
