"""Rate limits in Redis (per IP and per account): 429 with Retry-After, recovery after the window,
and a growing delay after repeated failed sign-ins. Apps here are built with tiny limits."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import httpx
from fastapi import FastAPI

from referloop.runtime import Runtime
from tests.factories import (
    DEFAULT_PASSWORD,
    asgi_client,
    db_value,
    latest_code,
    new_email,
    new_phone,
    register_member,
)

TINY = "3/2 second"


def assert_429(r: httpx.Response) -> int:
    assert r.status_code == 429, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "rate_limited"
    retry_after = int(r.headers["retry-after"])
    assert retry_after >= 1
    assert r.json()["retry_after"] == retry_after
    return retry_after


class TestPerIp:
    async def test_register_answers_429_then_recovers(self, app_factory: Callable[..., FastAPI]) -> None:
        app = app_factory(rate_limit_register=TINY)
        rt: Runtime = app.state.runtime
        async with asgi_client(app) as client:
            for _ in range(3):
                await register_member(client)
            blocked_email = new_email()
            r = await client.post(
                "/v1/auth/register",
                json={
                    "email": blocked_email,
                    "password": DEFAULT_PASSWORD,
                    "display_name": "X",
                },
            )
            retry_after = assert_429(r)
            assert retry_after <= 3  # the window (2 s) plus one second of margin
            assert await db_value(rt, "SELECT count(*) FROM users WHERE email = :e", e=blocked_email) == 0
            # Another address is not limited.
            async with asgi_client(app) as elsewhere:
                await register_member(elsewhere)

            await asyncio.sleep(retry_after)
            await register_member(client, email=blocked_email)

    async def test_login_per_ip(self, app_factory: Callable[..., FastAPI]) -> None:
        app = app_factory(rate_limit_login=TINY)
        async with asgi_client(app) as client:
            members = [await register_member(client) for _ in range(4)]
            for m in members[:3]:
                r = await client.post("/v1/auth/login", json={"login": m.email, "password": m.password})
                assert r.status_code == 200
            last = members[3]
            retry_after = assert_429(
                await client.post("/v1/auth/login", json={"login": last.email, "password": last.password})
            )
            await asyncio.sleep(retry_after)
            r = await client.post("/v1/auth/login", json={"login": last.email, "password": last.password})
            assert r.status_code == 200

    async def test_login_per_ip_counts_an_ipv6_client_by_its_64(
        self, app_factory: Callable[..., FastAPI]
    ) -> None:
        # One host routinely holds a whole /64: moving to the next address must not reset its limit.
        app = app_factory(rate_limit_login=TINY)
        prefix = f"2001:db8:{random.randint(0, 0xFFFF):x}:{random.randint(0, 0xFFFF):x}"
        async with asgi_client(app) as client:
            members = [await register_member(client) for _ in range(4)]
        for i, m in enumerate(members[:3], start=1):
            async with asgi_client(app, ip=f"{prefix}::{i}") as c:
                r = await c.post("/v1/auth/login", json={"login": m.email, "password": m.password})
                assert r.status_code == 200
        last = members[3]
        async with asgi_client(app, ip=f"{prefix}:ffff:ffff:ffff:fff0") as c:
            assert_429(await c.post("/v1/auth/login", json={"login": last.email, "password": last.password}))
        async with asgi_client(app, ip=f"2001:db8:{random.randint(0, 0xFFFF):x}:1::1") as c:  # another /64
            r = await c.post("/v1/auth/login", json={"login": last.email, "password": last.password})
            assert r.status_code == 200

    async def test_refresh_per_ip(self, app_factory: Callable[..., FastAPI]) -> None:
        app = app_factory(rate_limit_refresh=TINY)
        async with asgi_client(app) as client:
            m = await register_member(client)
            token = m.refresh_token
            for _ in range(3):
                r = await client.post("/v1/auth/refresh", json={"refresh_token": token})
                assert r.status_code == 200
                token = r.json()["refresh_token"]
            retry_after = assert_429(await client.post("/v1/auth/refresh", json={"refresh_token": token}))
            await asyncio.sleep(retry_after)
            # The refused call did not spend the token.
            r = await client.post("/v1/auth/refresh", json={"refresh_token": token})
            assert r.status_code == 200


class TestPerAccount:
    async def test_login_per_account_across_addresses(self, app_factory: Callable[..., FastAPI]) -> None:
        app = app_factory(rate_limit_login=TINY)
        async with asgi_client(app) as client:
            m = await register_member(client)
        for _ in range(3):
            async with asgi_client(app) as c:
                r = await c.post("/v1/auth/login", json={"login": m.email, "password": m.password})
                assert r.status_code == 200
        async with asgi_client(app) as c:
            # The same account written another way is the same account.
            assert m.email
            assert_429(
                await c.post("/v1/auth/login", json={"login": m.email.upper(), "password": m.password})
            )

    async def test_login_per_account_however_the_phone_is_written(
        self, app_factory: Callable[..., FastAPI]
    ) -> None:
        app = app_factory(rate_limit_login=TINY)
        phone = new_phone()
        async with asgi_client(app) as client:
            m = await register_member(client, phone=phone)
        for login in (phone, f"{phone[:3]} {phone[3:8]} {phone[8:]}", f"{phone[:3]}-{phone[3:]}"):
            async with asgi_client(app) as c:
                r = await c.post("/v1/auth/login", json={"login": login, "password": m.password})
                assert r.status_code == 200, login
        async with asgi_client(app) as c:
            r = await c.post(
                "/v1/auth/login", json={"login": f"{phone[:3]}  {phone[3:]}", "password": m.password}
            )
            assert_429(r)

    async def test_refresh_per_account_across_devices(self, app_factory: Callable[..., FastAPI]) -> None:
        app = app_factory(rate_limit_refresh=TINY)
        async with asgi_client(app) as client:
            m = await register_member(client)
        tokens = [m.refresh_token]
        for _ in range(3):
            async with asgi_client(app) as c:
                r = await c.post("/v1/auth/login", json={"login": m.email, "password": m.password})
                tokens.append(r.json()["refresh_token"])
        for token in tokens[:3]:
            async with asgi_client(app) as c:
                assert (await c.post("/v1/auth/refresh", json={"refresh_token": token})).status_code == 200
        async with asgi_client(app) as c:
            assert_429(await c.post("/v1/auth/refresh", json={"refresh_token": tokens[3]}))

    async def test_register_per_address(self, app_factory: Callable[..., FastAPI]) -> None:
        app = app_factory(rate_limit_register=TINY)
        email = new_email()
        body = {"email": email, "password": DEFAULT_PASSWORD, "display_name": "X"}
        statuses = []
        for _ in range(4):
            async with asgi_client(app) as c:
                statuses.append((await c.post("/v1/auth/register", json=body)).status_code)
        assert statuses == [201, 409, 409, 429]

    async def test_code_verification_per_account(self, app_factory: Callable[..., FastAPI]) -> None:
        app = app_factory(rate_limit_verify=TINY)
        rt: Runtime = app.state.runtime
        async with asgi_client(app) as client:
            m = await register_member(client)
        assert m.email
        code = await latest_code(rt, m.email)
        wrong = f"{(int(code) + 1) % 1_000_000:06d}"
        for _ in range(3):
            async with asgi_client(app) as c:
                r = await c.post("/v1/auth/verify/email/confirm", headers=m.auth, json={"code": wrong})
                assert r.status_code == 400
        async with asgi_client(app) as c:
            retry_after = assert_429(
                await c.post("/v1/auth/verify/email/confirm", headers=m.auth, json={"code": code})
            )
            # A refused call is not an attempt.
            assert (
                await db_value(
                    rt,
                    "SELECT attempts FROM one_time_codes WHERE user_id = :u AND consumed_at IS NULL",
                    u=m.id,
                )
                == 3
            )
            await asyncio.sleep(retry_after)
            r = await c.post("/v1/auth/verify/email/confirm", headers=m.auth, json={"code": code})
            assert r.status_code == 200


class TestFailedLoginDelay:
    async def test_delay_grows_and_success_clears_it(self, app_factory: Callable[..., FastAPI]) -> None:
        app = app_factory(login_failures_before_delay=2)
        async with asgi_client(app) as client:
            m = await register_member(client)

            async def attempt(password: str) -> httpx.Response:
                return await client.post("/v1/auth/login", json={"login": m.email, "password": password})

            assert (await attempt("wrong-password-1")).status_code == 401
            assert (await attempt("wrong-password-2")).status_code == 401
            # Locked: even the right password waits.
            first = assert_429(await attempt(m.password))
            assert first == 2
            await asyncio.sleep(first)
            assert (await attempt("wrong-password-3")).status_code == 401
            second = assert_429(await attempt("wrong-password-4"))
            assert second == 4
            await asyncio.sleep(second)

            assert (await attempt(m.password)).status_code == 200
            # Success cleared the count: the next failures start from scratch.
            assert (await attempt("wrong-password-5")).status_code == 401
            assert (await attempt("wrong-password-6")).status_code == 401
            assert_429(await attempt(m.password))

    async def test_the_delay_is_per_account(self, app_factory: Callable[..., FastAPI]) -> None:
        app = app_factory(login_failures_before_delay=1)
        async with asgi_client(app) as client:
            victim = await register_member(client)
            bystander = await register_member(client)
            assert (
                await client.post(
                    "/v1/auth/login", json={"login": victim.email, "password": "nope-nope-nope"}
                )
            ).status_code == 401
            assert_429(
                await client.post("/v1/auth/login", json={"login": victim.email, "password": "x" * 10})
            )
            r = await client.post(
                "/v1/auth/login", json={"login": bystander.email, "password": bystander.password}
            )
            assert r.status_code == 200


class TestCodeGuesses:
    async def test_fresh_codes_do_not_reset_the_guesses_an_account_gets(
        self, app_factory: Callable[..., FastAPI]
    ) -> None:
        """Each code allows 5 tries and a new code is one request away: the guesses themselves are
        capped per account (20 a day by default), from any address."""
        app = app_factory(rate_limit_code_guesses="6/day", rate_limit_verify="100/minute")
        async with asgi_client(app) as client:
            m = await register_member(client)
        assert m.email
        guesses = 0
        for _ in range(2):  # a new code, then five wrong guesses: twice over
            async with asgi_client(app) as c:
                assert (await c.post("/v1/auth/password/forgot", json={"email": m.email})).status_code == 202
                for _ in range(3):
                    guesses += 1
                    r = await c.post(
                        "/v1/auth/password/reset",
                        json={"email": m.email, "code": "000000", "new_password": "a-fine-new-pass-42"},
                    )
                    if guesses <= 6:
                        assert r.status_code == 400, r.text
        async with asgi_client(app) as c:
            await c.post("/v1/auth/password/forgot", json={"email": m.email})
            rt: Runtime = app.state.runtime
            code = await latest_code(rt, m.email)
            # Even the right code waits for the window: the account's guesses for today are spent.
            assert_429(
                await c.post(
                    "/v1/auth/password/reset",
                    json={"email": m.email, "code": code, "new_password": "a-fine-new-pass-42"},
                )
            )
            assert (
                await c.post("/v1/auth/login", json={"login": m.email, "password": m.password})
            ).status_code == 200
