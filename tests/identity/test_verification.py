"""One-time codes (6 digits, 10 minutes, 5 attempts): verification of email and phone, password reset,
and password change."""

from __future__ import annotations

import httpx

from referloop.runtime import Runtime
from tests.factories import (
    Member,
    db_rows,
    db_value,
    latest_code,
    latest_message,
    new_email,
    new_phone,
    register_member,
)

NEW_PASSWORD = "brass-kettle-91-meadow"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def other_code(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def confirm(client: httpx.AsyncClient, m: Member, channel: str, code: str) -> httpx.Response:
    return await client.post(f"/v1/auth/verify/{channel}/confirm", headers=m.auth, json={"code": code})


async def expire_codes(rt: Runtime, user_id: str) -> None:
    await db_rows(
        rt, "UPDATE one_time_codes SET expires_at = now() - interval '1 second' WHERE user_id = :u", u=user_id
    )


class TestEmailVerification:
    async def test_the_right_code_verifies(self, client: httpx.AsyncClient, runtime: Runtime) -> None:
        m = await register_member(client)
        assert m.email
        message = await latest_message(runtime, m.email)
        assert message["template"] == "verify_email"
        assert message["context"]["minutes"] == 10
        r = await confirm(client, m, "email", message["context"]["code"])
        assert r.status_code == 200, r.text
        assert r.json()["email_verified"] is True
        assert (await client.get("/v1/me", headers=m.auth)).json()["email_verified"] is True
        # A verified address has nothing left to verify; the code is spent.
        assert (await confirm(client, m, "email", message["context"]["code"])).status_code == 409
        r = await client.post("/v1/auth/verify/email/request", headers=m.auth)
        assert r.status_code == 409
        assert r.json()["code"] == "nothing_to_verify"

    async def test_a_new_code_replaces_the_old_one(self, client: httpx.AsyncClient, runtime: Runtime) -> None:
        m = await register_member(client)
        assert m.email
        first = await latest_code(runtime, m.email)
        r = await client.post("/v1/auth/verify/email/request", headers=m.auth)
        assert r.status_code == 202
        second = await latest_code(runtime, m.email)
        if first != second:  # 1 in a million they are equal
            assert (await confirm(client, m, "email", first)).status_code == 400
        assert (await confirm(client, m, "email", second)).status_code == 200

    async def test_wrong_codes_are_counted_and_the_fifth_locks_the_code(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        m = await register_member(client)
        assert m.email
        code = await latest_code(runtime, m.email)
        for left in (4, 3, 2, 1, 0):
            r = await confirm(client, m, "email", other_code(code))
            assert r.status_code == 400
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["code"] == "code_rejected"
            assert r.json()["attempts_left"] == left
        # The counter was kept although each refusal rolled nothing else forward: even the right code
        # is refused now.
        assert (
            await db_value(
                runtime,
                "SELECT attempts FROM one_time_codes WHERE user_id = :u AND consumed_at IS NULL",
                u=m.id,
            )
            == 5
        )
        r = await confirm(client, m, "email", code)
        assert r.status_code == 400
        assert (await client.get("/v1/me", headers=m.auth)).json()["email_verified"] is False
        # A new code starts a new count.
        await client.post("/v1/auth/verify/email/request", headers=m.auth)
        assert (await confirm(client, m, "email", await latest_code(runtime, m.email))).status_code == 200

    async def test_an_expired_code_is_refused(self, client: httpx.AsyncClient, runtime: Runtime) -> None:
        m = await register_member(client)
        assert m.email
        code = await latest_code(runtime, m.email)
        await expire_codes(runtime, m.id)
        r = await confirm(client, m, "email", code)
        assert r.status_code == 400
        assert "expired" in r.json()["detail"]
        assert (await client.get("/v1/me", headers=m.auth)).json()["email_verified"] is False

    async def test_codes_live_ten_minutes(self, client: httpx.AsyncClient, runtime: Runtime) -> None:
        m = await register_member(client)
        seconds = await db_value(
            runtime,
            "SELECT extract(epoch FROM expires_at - created_at) FROM one_time_codes WHERE user_id = :u",
            u=m.id,
        )
        assert int(seconds) == 600

    async def test_codes_are_stored_hashed(self, client: httpx.AsyncClient, runtime: Runtime) -> None:
        m = await register_member(client)
        assert m.email
        code = await latest_code(runtime, m.email)
        rows = await db_rows(runtime, "SELECT * FROM one_time_codes WHERE user_id = :u", u=m.id)
        assert code not in repr(rows)
        outbox = await db_rows(
            runtime, "SELECT payload::text AS p FROM outbox_events WHERE payload->>'to' = :e", e=m.email
        )
        assert outbox
        assert all(code not in row["p"] for row in outbox)

    async def test_malformed_code_is_a_422(self, client: httpx.AsyncClient) -> None:
        m = await register_member(client)
        for code in ("12345", "1234567", "abcdef", 123456):
            assert (await confirm(client, m, "email", code)).status_code == 422  # type: ignore[arg-type]


class TestPhoneVerification:
    async def test_phone_code_goes_to_the_sms_sink_and_verifies(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        phone = new_phone()
        m = await register_member(client, phone=phone)
        r = await client.post("/v1/auth/verify/phone/request", headers=m.auth)
        assert r.status_code == 202
        sms = await latest_message(runtime, phone, sms=True)
        assert sms["template"] == "verify_phone"
        wrong = await confirm(client, m, "phone", other_code(sms["context"]["code"]))
        assert wrong.status_code == 400
        r = await confirm(client, m, "phone", sms["context"]["code"])
        assert r.status_code == 200
        assert r.json()["phone_verified"] is True
        assert r.json()["email_verified"] is False

    async def test_an_email_code_does_not_verify_the_phone(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        m = await register_member(client, phone=new_phone())
        assert m.email
        email_code = await latest_code(runtime, m.email)
        r = await confirm(client, m, "phone", email_code)
        assert r.status_code == 400
        assert (await client.get("/v1/me", headers=m.auth)).json()["phone_verified"] is False

    async def test_no_phone_no_code(self, client: httpx.AsyncClient) -> None:
        m = await register_member(client)
        r = await client.post("/v1/auth/verify/phone/request", headers=m.auth)
        assert r.status_code == 409


class TestPasswordReset:
    async def test_reset_by_emailed_code(self, client: httpx.AsyncClient, runtime: Runtime) -> None:
        m = await register_member(client)
        other = (await client.post("/v1/auth/login", json={"login": m.email, "password": m.password})).json()
        r = await client.post("/v1/auth/password/forgot", json={"email": m.email})
        assert r.status_code == 202
        assert m.email
        message = await latest_message(runtime, m.email)
        assert message["template"] == "reset_password"
        r = await client.post(
            "/v1/auth/password/reset",
            json={
                "email": m.email,
                "code": message["context"]["code"],
                "new_password": NEW_PASSWORD,
            },
        )
        assert r.status_code == 204, r.text
        # Every session is signed out, and only the new password works.
        assert (await client.get("/v1/me", headers=m.auth)).status_code == 401
        assert (await client.get("/v1/me", headers=bearer(other["access_token"]))).status_code == 401
        assert (
            await client.post("/v1/auth/refresh", json={"refresh_token": m.refresh_token})
        ).status_code == 401
        old = await client.post("/v1/auth/login", json={"login": m.email, "password": m.password})
        assert old.status_code == 401
        new = await client.post("/v1/auth/login", json={"login": m.email, "password": NEW_PASSWORD})
        assert new.status_code == 200
        # The code worked once.
        again = await client.post(
            "/v1/auth/password/reset",
            json={
                "email": m.email,
                "code": message["context"]["code"],
                "new_password": "another-fine-pass-77",
            },
        )
        assert again.status_code == 400

    async def test_unknown_email_gets_the_same_answer_and_no_mail(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        m = await register_member(client)
        nobody = new_email()
        known = await client.post("/v1/auth/password/forgot", json={"email": m.email})
        unknown = await client.post("/v1/auth/password/forgot", json={"email": nobody})
        assert known.status_code == unknown.status_code == 202
        assert known.json() == unknown.json()
        assert (
            await db_value(runtime, "SELECT count(*) FROM outbox_events WHERE payload->>'to' = :e", e=nobody)
            == 0
        )
        r = await client.post(
            "/v1/auth/password/reset",
            json={
                "email": nobody,
                "code": "123456",
                "new_password": NEW_PASSWORD,
            },
        )
        assert r.status_code == 400

    async def test_wrong_codes_count_and_leave_the_password_alone(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        m = await register_member(client)
        assert m.email
        await client.post("/v1/auth/password/forgot", json={"email": m.email})
        code = await latest_code(runtime, m.email)
        for _ in range(5):
            r = await client.post(
                "/v1/auth/password/reset",
                json={
                    "email": m.email,
                    "code": other_code(code),
                    "new_password": NEW_PASSWORD,
                },
            )
            assert r.status_code == 400
        r = await client.post(
            "/v1/auth/password/reset",
            json={
                "email": m.email,
                "code": code,
                "new_password": NEW_PASSWORD,
            },
        )
        assert r.status_code == 400
        assert (await client.get("/v1/me", headers=m.auth)).status_code == 200
        login = await client.post("/v1/auth/login", json={"login": m.email, "password": m.password})
        assert login.status_code == 200

    async def test_expired_reset_code(self, client: httpx.AsyncClient, runtime: Runtime) -> None:
        m = await register_member(client)
        assert m.email
        await client.post("/v1/auth/password/forgot", json={"email": m.email})
        code = await latest_code(runtime, m.email)
        await expire_codes(runtime, m.id)
        r = await client.post(
            "/v1/auth/password/reset",
            json={
                "email": m.email,
                "code": code,
                "new_password": NEW_PASSWORD,
            },
        )
        assert r.status_code == 400
        assert (
            await client.post("/v1/auth/login", json={"login": m.email, "password": m.password})
        ).status_code == 200

    async def test_weak_new_password_does_not_spend_the_code(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        m = await register_member(client)
        assert m.email
        await client.post("/v1/auth/password/forgot", json={"email": m.email})
        code = await latest_code(runtime, m.email)
        r = await client.post(
            "/v1/auth/password/reset",
            json={
                "email": m.email,
                "code": code,
                "new_password": "1234567890",
            },
        )
        assert r.status_code == 422
        assert (await client.get("/v1/me", headers=m.auth)).status_code == 200
        r = await client.post(
            "/v1/auth/password/reset",
            json={
                "email": m.email,
                "code": code,
                "new_password": NEW_PASSWORD,
            },
        )
        assert r.status_code == 204

    async def test_the_verify_email_code_does_not_reset_the_password(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        m = await register_member(client)
        assert m.email
        verify_code = await latest_code(runtime, m.email)
        await client.post("/v1/auth/password/forgot", json={"email": m.email})
        reset_code = await latest_code(runtime, m.email)
        if verify_code != reset_code:
            r = await client.post(
                "/v1/auth/password/reset",
                json={
                    "email": m.email,
                    "code": verify_code,
                    "new_password": NEW_PASSWORD,
                },
            )
            assert r.status_code == 400


class TestPasswordChange:
    async def test_change_revokes_every_other_session_but_keeps_this_one(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        m = await register_member(client)
        others = [
            (await client.post("/v1/auth/login", json={"login": m.email, "password": m.password})).json()
            for _ in range(2)
        ]
        r = await client.post(
            "/v1/auth/password/change",
            headers=m.auth,
            json={"current_password": m.password, "new_password": NEW_PASSWORD},
        )
        assert r.status_code == 204, r.text
        assert (await client.get("/v1/me", headers=m.auth)).status_code == 200
        assert (
            await client.post("/v1/auth/refresh", json={"refresh_token": m.refresh_token})
        ).status_code == 200
        for other in others:
            assert (await client.get("/v1/me", headers=bearer(other["access_token"]))).status_code == 401
            assert (
                await client.post("/v1/auth/refresh", json={"refresh_token": other["refresh_token"]})
            ).status_code == 401
        sessions = (await client.get("/v1/auth/sessions", headers=m.auth)).json()["items"]
        assert [s["id"] for s in sessions] == [m.session_id]
        assert (
            await client.post("/v1/auth/login", json={"login": m.email, "password": m.password})
        ).status_code == 401
        assert (
            await client.post("/v1/auth/login", json={"login": m.email, "password": NEW_PASSWORD})
        ).status_code == 200

    async def test_wrong_current_password_changes_nothing(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        m = await register_member(client)
        other = (await client.post("/v1/auth/login", json={"login": m.email, "password": m.password})).json()
        r = await client.post(
            "/v1/auth/password/change",
            headers=m.auth,
            json={"current_password": "not-my-password", "new_password": NEW_PASSWORD},
        )
        # 403, not 401: the token is fine, and clients read 401 as "sign in again".
        assert r.status_code == 403
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "wrong_password"
        assert (await client.get("/v1/me", headers=m.auth)).status_code == 200
        assert (await client.get("/v1/me", headers=bearer(other["access_token"]))).status_code == 200
        assert (
            await client.post("/v1/auth/login", json={"login": m.email, "password": m.password})
        ).status_code == 200

    async def test_weak_new_password_is_refused(self, client: httpx.AsyncClient) -> None:
        m = await register_member(client)
        other = (await client.post("/v1/auth/login", json={"login": m.email, "password": m.password})).json()
        r = await client.post(
            "/v1/auth/password/change",
            headers=m.auth,
            json={"current_password": m.password, "new_password": "short"},
        )
        assert r.status_code == 422
        assert (await client.get("/v1/me", headers=bearer(other["access_token"]))).status_code == 200
