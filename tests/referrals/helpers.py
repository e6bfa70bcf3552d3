"""Helpers for the referrals tests: staff, catalogue and campaign data made through the API."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pyotp
from sqlalchemy import text

from referloop.identity.models import Role
from referloop.runtime import Runtime
from tests.factories import DEFAULT_PASSWORD, new_email

BROWSER_UA = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Mobile Safari/537.36"
)
BOT_UA = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


@dataclass
class Admin:
    id: str
    access_token: str

    @property
    def auth(self) -> dict[str, str]:
        """With a fresh Idempotency-Key each time (staff creates require one; other routes ignore it)."""
        return {"Authorization": f"Bearer {self.access_token}", "Idempotency-Key": str(uuid.uuid4())}


async def make_admin(client: httpx.AsyncClient, rt: Runtime) -> Admin:
    """An admin who enrolled TOTP and signed in with a code (staff routes need both)."""
    from referloop.identity.service.accounts import create_user

    email = new_email()
    async with rt.db.sessionmaker() as session, session.begin():
        user = await create_user(
            session,
            rt,
            email=email,
            phone=None,
            password=DEFAULT_PASSWORD,
            display_name="Referrals Admin",
            role=Role.admin,
        )
    r = await client.post("/v1/auth/login", json={"login": email, "password": DEFAULT_PASSWORD})
    assert r.status_code == 200, r.text
    auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
    r = await client.post("/v1/auth/totp/enroll", headers=auth, json={"password": DEFAULT_PASSWORD})
    assert r.status_code == 200, r.text
    totp = pyotp.TOTP(r.json()["secret"])
    r = await client.post("/v1/auth/totp/confirm", headers=auth, json={"code": totp.now()})
    assert r.status_code == 200, r.text
    # The server accepts one step either side and never a step twice: the next step is fresh.
    r = await client.post(
        "/v1/auth/login",
        json={"login": email, "password": DEFAULT_PASSWORD, "totp_code": totp.at(time.time() + 30)},
    )
    assert r.status_code == 200, r.text
    return Admin(id=str(user.id), access_token=r.json()["access_token"])


async def sql(rt: Runtime, statement: str, **params: Any) -> list[dict[str, Any]]:
    async with rt.db.sessionmaker() as session, session.begin():
        result = await session.execute(text(statement), params)
        return [dict(r._mapping) for r in result] if result.returns_rows else []


def uniq() -> str:
    return uuid.uuid4().hex[:10]


async def create_university(client: httpx.AsyncClient, admin: Admin, **overrides: Any) -> dict[str, Any]:
    u = uniq()
    body: dict[str, Any] = {"name": f"University {u}", "slug": f"uni-{u}", "country": "IN", **overrides}
    r = await client.post("/v1/staff/universities", json=body, headers=admin.auth)
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


async def create_program(
    client: httpx.AsyncClient, admin: Admin, university_id: str, **overrides: Any
) -> dict[str, Any]:
    u = uniq()
    body: dict[str, Any] = {
        "university_id": university_id,
        "name": f"Program {u}",
        "slug": f"prog-{u}",
        "level": "undergraduate",
        "intakes": ["2027-07-01"],
        "fee": {"amount": 45_000_000, "currency": "INR"},
        "landing_url": f"https://uni.example.edu/programs/{u}?lang=en",
        **overrides,
    }
    r = await client.post("/v1/staff/programs", json=body, headers=admin.auth)
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


async def create_campaign(
    client: httpx.AsyncClient,
    admin: Admin,
    program_ids: list[str],
    *,
    activate: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": f"Campaign {uniq()}",
        "program_ids": program_ids,
        "starts_at": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
        "currency": "INR",
        **overrides,
    }
    r = await client.post("/v1/staff/campaigns", json=body, headers=admin.auth)
    assert r.status_code == 201, r.text
    campaign: dict[str, Any] = r.json()
    if activate:
        r = await client.post(
            f"/v1/staff/campaigns/{campaign['id']}/state", json={"state": "active"}, headers=admin.auth
        )
        assert r.status_code == 200, r.text
        campaign = r.json()
    return campaign


async def audit_actions(rt: Runtime, target_id: str) -> list[str]:
    rows = await sql(
        rt, "SELECT action FROM audit_log WHERE target_id = :t ORDER BY created_at, id", t=target_id
    )
    return [r["action"] for r in rows]
