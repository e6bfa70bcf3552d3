"""Roles and staff access: TOTP before any staff route, roles re-read on every call, audited changes,
and `referloop create-staff`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyotp
import pytest

from referloop.identity.models import Role
from referloop.runtime import Runtime
from tests.factories import (
    DEFAULT_PASSWORD,
    create_staff,
    create_staff_user,
    db_rows,
    db_value,
    new_email,
    register_member,
)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def login(client: httpx.AsyncClient, email: str, totp_code: str | None = None) -> httpx.Response:
    body = {"login": email, "password": DEFAULT_PASSWORD}
    if totp_code:
        body["totp_code"] = totp_code
    return await client.post("/v1/auth/login", json=body)


class TestStaffRoutesRefuse:
    async def test_a_member_gets_403(self, client: httpx.AsyncClient) -> None:
        m = await register_member(client)
        for path in ("/v1/staff/members", f"/v1/staff/members/{m.id}"):
            r = await client.get(path, headers=m.auth)
            assert r.status_code == 403
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["code"] == "insufficient_role"
        r = await client.put(f"/v1/staff/members/{m.id}/role", headers=m.auth, json={"role": "admin"})
        assert r.status_code == 403
        assert (await client.get("/v1/me", headers=m.auth)).json()["role"] == "member"

    async def test_no_token_gets_401(self, client: httpx.AsyncClient) -> None:
        assert (await client.get("/v1/staff/members")).status_code == 401

    @pytest.mark.parametrize("role", [Role.support, Role.finance, Role.admin])
    async def test_staff_without_totp_get_403_staff_totp_required(
        self, client: httpx.AsyncClient, runtime: Runtime, role: Role
    ) -> None:
        _, email = await create_staff_user(runtime, role=role)
        r = await login(client, email)
        assert r.status_code == 200
        staff = await client.get("/v1/staff/members", headers=bearer(r.json()["access_token"]))
        assert staff.status_code == 403
        assert staff.json()["code"] == "staff_totp_required"

    async def test_enrolled_but_signed_in_without_a_code_is_not_enough(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        _, email = await create_staff_user(runtime)
        token = (await login(client, email)).json()["access_token"]
        secret = (
            await client.post(
                "/v1/auth/totp/enroll", headers=bearer(token), json={"password": DEFAULT_PASSWORD}
            )
        ).json()["secret"]
        r = await client.post(
            "/v1/auth/totp/confirm", headers=bearer(token), json={"code": pyotp.TOTP(secret).now()}
        )
        assert r.status_code == 200
        assert r.json()["totp_enabled"] is True
        # The session was opened before TOTP: it still cannot reach staff routes.
        assert (await client.get("/v1/staff/members", headers=bearer(token))).json()[
            "code"
        ] == "staff_totp_required"


class TestTotp:
    async def test_after_enrolment_and_a_code_at_login_staff_routes_answer(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        admin = await create_staff(client, runtime)
        member = await register_member(client)
        r = await client.get("/v1/staff/members", headers=admin.auth, params={"q": member.email})
        assert r.status_code == 200, r.text
        assert [u["id"] for u in r.json()["items"]] == [member.id]
        r = await client.get(f"/v1/staff/members/{member.id}", headers=admin.auth)
        assert r.status_code == 200
        assert r.json()["email"] == member.email

    async def test_enrolled_staff_must_give_a_code(self, client: httpx.AsyncClient, runtime: Runtime) -> None:
        admin = await create_staff(client, runtime)
        assert admin.email
        r = await login(client, admin.email)
        assert r.status_code == 401
        assert r.json()["code"] == "totp_required"
        r = await login(client, admin.email, "000000" if admin.next_totp() != "000000" else "111111")
        assert r.status_code == 401
        assert r.json()["code"] == "invalid_credentials"

    async def test_a_code_cannot_be_used_twice(self, client: httpx.AsyncClient, runtime: Runtime) -> None:
        admin = await create_staff(client, runtime)
        assert admin.email
        # create_staff signed in with next_totp(): the same code again is a replay.
        r = await login(client, admin.email, admin.next_totp())
        assert r.status_code == 401
        assert r.json()["code"] == "invalid_credentials"
        # Nor is an older one (the one that confirmed enrolment).
        r = await login(client, admin.email, pyotp.TOTP(admin.totp_secret).now())
        assert r.status_code == 401

    async def test_concurrent_logins_with_one_code_open_one_session(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        _, email = await create_staff_user(runtime)
        token = (await login(client, email)).json()["access_token"]
        secret = (
            await client.post(
                "/v1/auth/totp/enroll", headers=bearer(token), json={"password": DEFAULT_PASSWORD}
            )
        ).json()["secret"]
        totp = pyotp.TOTP(secret)
        await client.post("/v1/auth/totp/confirm", headers=bearer(token), json={"code": totp.now()})
        code = totp.at(time.time() + 30)
        results = await asyncio.gather(*(login(client, email, code) for _ in range(4)))
        assert sorted(r.status_code for r in results) == [200, 401, 401, 401]

    async def test_enrolment_needs_a_right_code(self, client: httpx.AsyncClient, runtime: Runtime) -> None:
        _, email = await create_staff_user(runtime)
        token = (await login(client, email)).json()["access_token"]
        secret = (
            await client.post(
                "/v1/auth/totp/enroll", headers=bearer(token), json={"password": DEFAULT_PASSWORD}
            )
        ).json()["secret"]
        wrong = f"{(int(pyotp.TOTP(secret).now()) + 1) % 1_000_000:06d}"
        r = await client.post("/v1/auth/totp/confirm", headers=bearer(token), json={"code": wrong})
        assert r.status_code == 400
        assert (await client.get("/v1/me", headers=bearer(token))).json()["totp_enabled"] is False
        # Still not enabled: a login without a code still works.
        assert (await login(client, email)).status_code == 200

    async def test_enrolling_twice_is_refused(self, client: httpx.AsyncClient, runtime: Runtime) -> None:
        admin = await create_staff(client, runtime)
        r = await client.post("/v1/auth/totp/enroll", headers=admin.auth, json={"password": DEFAULT_PASSWORD})
        assert r.status_code == 409

    async def test_the_secret_is_stored_encrypted(self, client: httpx.AsyncClient, runtime: Runtime) -> None:
        admin = await create_staff(client, runtime)
        stored = await db_value(runtime, "SELECT totp_secret FROM users WHERE id = :u", u=admin.id)
        assert admin.totp_secret not in stored


class TestRoles:
    async def test_patch_me_cannot_raise_a_role(self, client: httpx.AsyncClient) -> None:
        m = await register_member(client)
        r = await client.patch("/v1/me", headers=m.auth, json={"role": "admin"})
        assert r.status_code == 422
        assert (await client.get("/v1/me", headers=m.auth)).json()["role"] == "member"
        assert (await client.get("/v1/staff/members", headers=m.auth)).status_code == 403

    async def test_role_change_is_audited_and_a_demoted_admin_loses_access_at_once(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        boss = await create_staff(client, runtime)
        other = await create_staff(client, runtime)
        assert (await client.get("/v1/staff/members", headers=other.auth)).status_code == 200

        r = await client.put(f"/v1/staff/members/{other.id}/role", headers=boss.auth, json={"role": "member"})
        assert r.status_code == 200, r.text
        assert r.json()["role"] == "member"
        # The demoted admin's token has not expired, yet staff routes refuse it now.
        r = await client.get("/v1/staff/members", headers=other.auth)
        assert r.status_code == 403
        assert r.json()["code"] == "insufficient_role"
        r = await client.put(f"/v1/staff/members/{boss.id}/role", headers=other.auth, json={"role": "member"})
        assert r.status_code == 403

        rows = await db_rows(
            runtime,
            "SELECT actor_id, actor_type, before, after, request_id FROM audit_log "
            "WHERE action = 'staff.role_changed' AND target_id = :t",
            t=other.id,
        )
        assert len(rows) == 1
        assert str(rows[0]["actor_id"]) == boss.id
        assert rows[0]["actor_type"] == "staff"
        assert rows[0]["before"] == {"role": "admin"}
        assert rows[0]["after"] == {"role": "member"}
        assert rows[0]["request_id"]

    async def test_a_promoted_member_must_still_enrol_totp(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        admin = await create_staff(client, runtime)
        m = await register_member(client)
        r = await client.put(f"/v1/staff/members/{m.id}/role", headers=admin.auth, json={"role": "support"})
        assert r.status_code == 200
        r = await client.get("/v1/staff/members", headers=m.auth)
        assert r.status_code == 403
        assert r.json()["code"] == "staff_totp_required"

    async def test_support_cannot_change_roles_and_finance_can_set_kyc(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        support = await create_staff(client, runtime, role=Role.support)
        finance = await create_staff(client, runtime, role=Role.finance)
        m = await register_member(client)
        assert (await client.get(f"/v1/staff/members/{m.id}", headers=support.auth)).status_code == 200
        r = await client.put(f"/v1/staff/members/{m.id}/role", headers=support.auth, json={"role": "admin"})
        assert r.status_code == 403
        assert r.json()["code"] == "insufficient_role"
        r = await client.put(
            f"/v1/staff/members/{m.id}/kyc-status", headers=support.auth, json={"kyc_status": "verified"}
        )
        assert r.status_code == 403
        r = await client.put(f"/v1/staff/members/{m.id}/role", headers=finance.auth, json={"role": "finance"})
        assert r.status_code == 403
        r = await client.put(
            f"/v1/staff/members/{m.id}/kyc-status", headers=finance.auth, json={"kyc_status": "verified"}
        )
        assert r.status_code == 200
        me = (await client.get("/v1/me", headers=m.auth)).json()
        assert (me["role"], me["kyc_status"]) == ("member", "verified")

    async def test_only_admins_set_the_member_level_audited_and_the_member_sees_it(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        admin = await create_staff(client, runtime)
        support = await create_staff(client, runtime, role=Role.support)
        finance = await create_staff(client, runtime, role=Role.finance)
        m = await register_member(client)
        path = f"/v1/staff/members/{m.id}/level"
        for who in (m, support, finance):
            r = await client.put(path, headers=who.auth, json={"level": 3})
            assert r.status_code == 403
        assert (await client.get("/v1/me", headers=m.auth)).json()["level"] == 1
        for bad in ({"level": 0}, {"level": 1001}, {"level": "3"}, {"level": 2.5}, {}, {"level": 3, "x": 1}):
            r = await client.put(path, headers=admin.auth, json=bad)
            assert r.status_code == 422, bad
        r = await client.put(
            "/v1/staff/members/01900000-0000-7000-8000-000000000000/level",
            headers=admin.auth,
            json={"level": 3},
        )
        assert r.status_code == 404
        assert (
            await db_rows(
                runtime,
                "SELECT 1 FROM audit_log WHERE action = 'staff.level_changed' AND target_id = :t",
                t=m.id,
            )
            == []
        )

        r = await client.put(path, headers=admin.auth, json={"level": 3})
        assert r.status_code == 200, r.text
        assert r.json()["level"] == 3
        assert (await client.get("/v1/me", headers=m.auth)).json()["level"] == 3
        assert (await client.get(f"/v1/staff/members/{m.id}", headers=support.auth)).json()["level"] == 3
        # The member cannot change it back.
        r = await client.patch("/v1/me", headers=m.auth, json={"level": 1})
        assert r.status_code == 422
        assert (await client.get("/v1/me", headers=m.auth)).json()["level"] == 3
        rows = await db_rows(
            runtime,
            "SELECT actor_id, actor_type, before, after FROM audit_log "
            "WHERE action = 'staff.level_changed' AND target_id = :t",
            t=m.id,
        )
        assert [(str(r["actor_id"]), r["actor_type"], r["before"], r["after"]) for r in rows] == [
            (admin.id, "staff", {"level": 1}, {"level": 3})
        ]

    async def test_an_admin_cannot_change_their_own_role(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        admin = await create_staff(client, runtime)
        r = await client.put(
            f"/v1/staff/members/{admin.id}/role", headers=admin.auth, json={"role": "member"}
        )
        assert r.status_code == 409
        assert (await client.get("/v1/staff/members", headers=admin.auth)).status_code == 200

    async def test_unknown_role_is_a_422(self, client: httpx.AsyncClient, runtime: Runtime) -> None:
        admin = await create_staff(client, runtime)
        m = await register_member(client)
        r = await client.put(f"/v1/staff/members/{m.id}/role", headers=admin.auth, json={"role": "superuser"})
        assert r.status_code == 422


class TestMemberSearch:
    async def test_search_by_referral_code_is_case_insensitive(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        admin = await create_staff(client, runtime, role=Role.support)
        m = await register_member(client)
        code = (await client.get("/v1/me", headers=m.auth)).json()["referral_code"]
        r = await client.get("/v1/staff/members", headers=admin.auth, params={"q": code.lower()})
        assert [u["id"] for u in r.json()["items"]] == [m.id]

    async def test_pages_through_members(self, client: httpx.AsyncClient, runtime: Runtime) -> None:
        admin = await create_staff(client, runtime)
        members = [await register_member(client) for _ in range(3)]
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, str | int] = {"limit": 2, "role": "member"}
            if cursor:
                params["cursor"] = cursor
            r = await client.get("/v1/staff/members", headers=admin.auth, params=params)
            assert r.status_code == 200
            seen += [u["id"] for u in r.json()["items"]]
            cursor = r.json()["next_cursor"]
            if not cursor or all(x.id in seen for x in members):
                break
        assert all(x.id in seen for x in members)
        assert len(seen) == len(set(seen))


class TestCreateStaffCommand:
    def _run(
        self, database_url: str, redis_url: str, tmp_path: Path, *args: str
    ) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "REFERLOOP_DATABASE_URL": database_url,
            "REFERLOOP_REDIS_URL": redis_url,
            "REFERLOOP_VAR_DIR": str(tmp_path),
            "REFERLOOP_ENV": "test",
            "REFERLOOP_LOG_LEVEL": "WARNING",
            "REFERLOOP_ARGON2_MEMORY_COST_KIB": "1024",
        }
        return subprocess.run(
            [str(Path(sys.executable).parent / "referloop"), *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    async def test_creates_an_admin_who_signs_in_and_enrols_totp(
        self, client: httpx.AsyncClient, runtime: Runtime, database_url: str, redis_url: str, tmp_path: Path
    ) -> None:
        email = new_email()
        result = await asyncio.to_thread(
            self._run,
            database_url,
            redis_url,
            tmp_path,
            "create-staff",
            "--email",
            email.upper(),
            "--role",
            "admin",
            "--password",
            DEFAULT_PASSWORD,
        )
        assert result.returncode == 0, result.stderr
        assert "created admin" in result.stdout
        r = await login(client, email)
        assert r.status_code == 200
        token = r.json()["access_token"]
        me = (await client.get("/v1/me", headers=bearer(token))).json()
        assert me["role"] == "admin"
        assert (await client.get("/v1/staff/members", headers=bearer(token))).json()[
            "code"
        ] == "staff_totp_required"
        assert (
            await db_value(
                runtime,
                "SELECT count(*) FROM audit_log WHERE action = 'staff.created' AND target_id = :t",
                t=me["id"],
            )
            == 1
        )

    async def test_refuses_member_role_weak_password_and_duplicates(
        self, runtime: Runtime, database_url: str, redis_url: str, tmp_path: Path
    ) -> None:
        email = new_email()
        member_role = await asyncio.to_thread(
            self._run,
            database_url,
            redis_url,
            tmp_path,
            "create-staff",
            "--email",
            email,
            "--role",
            "member",
            "--password",
            DEFAULT_PASSWORD,
        )
        assert member_role.returncode != 0
        weak = await asyncio.to_thread(
            self._run,
            database_url,
            redis_url,
            tmp_path,
            "create-staff",
            "--email",
            email,
            "--password",
            "password1",
        )
        assert weak.returncode == 1
        assert "characters" in weak.stderr
        assert await db_value(runtime, "SELECT count(*) FROM users WHERE email = :e", e=email) == 0

        await create_staff_user(runtime, email=email)
        again = await asyncio.to_thread(
            self._run,
            database_url,
            redis_url,
            tmp_path,
            "create-staff",
            "--email",
            email,
            "--password",
            DEFAULT_PASSWORD,
        )
        assert again.returncode == 1
        assert "exists" in again.stderr
        assert await db_value(runtime, "SELECT count(*) FROM users WHERE email = :e", e=email) == 1


class TestMemberTotp:
    async def test_enrolling_needs_the_password_so_a_stolen_session_cannot_lock_the_owner_out(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        member = await register_member(client)
        r = await client.post("/v1/auth/totp/enroll", headers=member.auth, json={})
        assert r.status_code == 422
        r = await client.post(
            "/v1/auth/totp/enroll", headers=member.auth, json={"password": "not-the-password-1"}
        )
        assert r.status_code == 403 and r.json()["code"] == "wrong_password"
        assert await db_value(runtime, "SELECT totp_secret FROM users WHERE id = :u", u=member.id) is None
        failed = await db_rows(
            runtime, "SELECT action FROM audit_log WHERE target_id = :u ORDER BY created_at, id", u=member.id
        )
        assert failed[-1]["action"] == "auth.totp_enroll_failed"

    async def test_a_member_turns_totp_on_then_off_with_password_and_code(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        member = await register_member(client)
        secret = (
            await client.post("/v1/auth/totp/enroll", headers=member.auth, json={"password": member.password})
        ).json()["secret"]
        totp = pyotp.TOTP(secret)
        assert (
            await client.post("/v1/auth/totp/confirm", headers=member.auth, json={"code": totp.now()})
        ).status_code == 200
        assert (await login(client, member.email)).json()["code"] == "totp_required"

        next_code = totp.at(time.time() + 30)
        wrong = f"{(int(next_code) + 1) % 1_000_000:06d}"
        r = await client.post(
            "/v1/auth/totp/disable", headers=member.auth, json={"password": member.password, "code": wrong}
        )
        assert r.status_code == 400
        r = await client.post(
            "/v1/auth/totp/disable",
            headers=member.auth,
            json={"password": "not-the-password-1", "code": next_code},
        )
        assert r.status_code == 403 and r.json()["code"] == "wrong_password"
        r = await client.post(
            "/v1/auth/totp/disable",
            headers=member.auth,
            json={"password": member.password, "code": next_code},
        )
        assert r.status_code == 200 and r.json()["totp_enabled"] is False
        assert (await login(client, member.email)).status_code == 200
        actions = await db_rows(runtime, "SELECT action FROM audit_log WHERE target_id = :u", u=member.id)
        assert "auth.totp_disabled" in {a["action"] for a in actions}

    async def test_staff_keep_totp(self, client: httpx.AsyncClient, runtime: Runtime) -> None:
        admin = await create_staff(client, runtime)
        r = await client.post(
            "/v1/auth/totp/disable",
            headers=admin.auth,
            json={"password": admin.password, "code": admin.next_totp()},
        )
        assert r.status_code == 403
        assert (await client.get("/v1/staff/members", headers=admin.auth)).status_code == 200
