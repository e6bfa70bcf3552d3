"""Refresh-token rotation (RFC 9700 §4.14): single use, reuse revokes the family, 10-second grace."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
from fastapi import FastAPI

from referloop.core.security.tokens import hash_token
from referloop.runtime import Runtime
from tests.factories import Member, asgi_client, db_rows, db_value, register_member


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/v1/auth/refresh", json={"refresh_token": token})


async def reuse_rows(rt: Runtime, session_id: str) -> list[dict[str, object]]:
    return await db_rows(
        rt,
        "SELECT actor_id, ip FROM audit_log WHERE action = 'auth.refresh_reuse' AND target_id = :s",
        s=session_id,
    )


async def age_used_token(rt: Runtime, token: str, seconds: int) -> None:
    """Pretend the token was rotated `seconds` ago (instead of sleeping through the grace)."""
    await db_rows(
        rt,
        "UPDATE refresh_tokens SET used_at = used_at - make_interval(secs => :s) WHERE token_hash = :h",
        s=seconds,
        h=hash_token(token),
    )


class TestRotation:
    async def test_each_refresh_returns_a_new_pair_that_works(self, client: httpx.AsyncClient) -> None:
        m = await register_member(client)
        seen = {m.refresh_token}
        token = m.refresh_token
        for _ in range(3):
            r = await refresh(client, token)
            assert r.status_code == 200, r.text
            pair = r.json()
            assert pair["refresh_token"] not in seen
            assert pair["access_token"] != m.access_token
            assert pair["session_id"] == m.session_id
            assert (await client.get("/v1/me", headers=bearer(pair["access_token"]))).json()["id"] == m.id
            seen.add(pair["refresh_token"])
            token = pair["refresh_token"]

    async def test_refresh_tokens_are_stored_hashed(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        m = await register_member(client)
        stored = await db_rows(
            runtime, "SELECT token_hash FROM refresh_tokens WHERE session_id = :s", s=m.session_id
        )
        # Only the SHA-256 of the token is kept: a copy of the table cannot be replayed.
        assert [bytes(r["token_hash"]) for r in stored] == [hash_token(m.refresh_token)]

    async def test_unknown_or_malformed_token(self, client: httpx.AsyncClient) -> None:
        r = await refresh(client, "rt_" + "x" * 43)
        assert r.status_code == 401
        assert r.json()["code"] == "invalid_token"
        assert (await refresh(client, "short")).status_code == 422


class TestGrace:
    async def test_a_retry_within_the_grace_gets_the_same_pair(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        m = await register_member(client)
        first = await refresh(client, m.refresh_token)
        second = await refresh(client, m.refresh_token)
        assert first.status_code == second.status_code == 200
        assert first.json() == second.json()
        # No revocation: the new pair keeps working.
        pair = first.json()
        assert (await client.get("/v1/me", headers=bearer(pair["access_token"]))).status_code == 200
        assert (await refresh(client, pair["refresh_token"])).status_code == 200
        assert await reuse_rows(runtime, m.session_id) == []

    async def test_concurrent_refreshes_of_one_token_all_get_the_same_pair(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        m = await register_member(client)
        results = await asyncio.gather(*(refresh(client, m.refresh_token) for _ in range(5)))
        assert [r.status_code for r in results] == [200] * 5
        pairs = {r.text for r in results}
        assert len(pairs) == 1
        pair = results[0].json()
        assert (await refresh(client, pair["refresh_token"])).status_code == 200
        assert await reuse_rows(runtime, m.session_id) == []
        # Exactly one rotation happened: the original token plus one new one (plus the one just made).
        assert (
            await db_value(
                runtime, "SELECT count(*) FROM refresh_tokens WHERE session_id = :s", s=m.session_id
            )
            == 3
        )


class TestReuse:
    async def _assert_family_revoked(
        self, client: httpx.AsyncClient, rt: Runtime, m: Member, newest: dict[str, str]
    ) -> None:
        assert (await client.get("/v1/me", headers=bearer(newest["access_token"]))).status_code == 401
        assert (await client.get("/v1/me", headers=m.auth)).status_code == 401
        r = await refresh(client, newest["refresh_token"])
        assert r.status_code == 401
        assert (
            await db_value(rt, "SELECT revoked_reason FROM auth_sessions WHERE id = :s", s=m.session_id)
            == "refresh_token_reused"
        )
        rows = await reuse_rows(rt, m.session_id)
        assert len(rows) == 1
        assert str(rows[0]["actor_id"]) == m.id

    async def test_reuse_after_the_grace_revokes_the_whole_family(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        m = await register_member(client)
        first = (await refresh(client, m.refresh_token)).json()
        second = (await refresh(client, first["refresh_token"])).json()
        await age_used_token(runtime, m.refresh_token, 11)

        r = await refresh(client, m.refresh_token)  # an attacker replays the stolen original
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "refresh_token_reused"
        await self._assert_family_revoked(client, runtime, m, second)

    async def test_just_inside_the_grace_is_still_a_retry(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        m = await register_member(client)
        first = await refresh(client, m.refresh_token)
        await age_used_token(runtime, m.refresh_token, 8)
        again = await refresh(client, m.refresh_token)
        assert again.status_code == 200
        assert again.json() == first.json()

    async def test_with_no_grace_a_second_use_revokes_at_once(
        self, app_factory: Callable[..., FastAPI]
    ) -> None:
        app = app_factory(refresh_reuse_grace_seconds=0)
        rt: Runtime = app.state.runtime
        async with asgi_client(app) as client:
            m = await register_member(client)
            pair = (await refresh(client, m.refresh_token)).json()
            r = await refresh(client, m.refresh_token)
            assert r.status_code == 401
            assert r.json()["code"] == "refresh_token_reused"
            await self._assert_family_revoked(client, rt, m, pair)

    async def test_other_sessions_of_the_member_survive(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        m = await register_member(client)
        other = (await client.post("/v1/auth/login", json={"login": m.email, "password": m.password})).json()
        await refresh(client, m.refresh_token)
        await age_used_token(runtime, m.refresh_token, 30)
        assert (await refresh(client, m.refresh_token)).status_code == 401
        assert (await client.get("/v1/me", headers=bearer(other["access_token"]))).status_code == 200
        assert (await refresh(client, other["refresh_token"])).status_code == 200


class TestExpiry:
    async def test_expired_refresh_token_is_refused(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        m = await register_member(client)
        await db_rows(
            runtime,
            "UPDATE refresh_tokens SET expires_at = now() - interval '1 second' WHERE token_hash = :h",
            h=hash_token(m.refresh_token),
        )
        r = await refresh(client, m.refresh_token)
        assert r.status_code == 401
        assert r.json()["code"] == "invalid_token"
        # Refused, not rotated: no new token was issued for the session.
        assert (
            await db_value(
                runtime, "SELECT count(*) FROM refresh_tokens WHERE session_id = :s", s=m.session_id
            )
            == 1
        )

    async def test_refresh_tokens_last_thirty_days(self, client: httpx.AsyncClient, runtime: Runtime) -> None:
        m = await register_member(client)
        days = await db_value(
            runtime,
            "SELECT round(extract(epoch FROM expires_at - created_at) / 86400) FROM refresh_tokens "
            "WHERE token_hash = :h",
            h=hash_token(m.refresh_token),
        )
        assert int(days) == 30
