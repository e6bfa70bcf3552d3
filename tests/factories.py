"""Plain async helpers that make test data through the public API (or, where noted, directly)."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pyotp
from fastapi import FastAPI
from sqlalchemy import select, text

from referloop.core.outbox.models import OutboxEvent
from referloop.identity.models import Role
from referloop.notifications.service import EMAIL_TOPIC, SMS_TOPIC, open_context
from referloop.runtime import Runtime

DEFAULT_PASSWORD = "plum-orchard-42-lantern"


@dataclass
class Member:
    id: str
    email: str | None
    phone: str | None
    password: str
    access_token: str
    refresh_token: str
    session_id: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


def new_email() -> str:
    return f"m{uuid.uuid4().hex[:16]}@example.com"


def new_phone() -> str:
    # Indian mobile numbers: +91 and 10 digits starting 9; valid for libphonenumber.
    return f"+919{random.randint(100000000, 999999999)}"


async def register_member(
    client: httpx.AsyncClient,
    *,
    email: str | None = "",
    phone: str | None = None,
    password: str = DEFAULT_PASSWORD,
    **extra: Any,
) -> Member:
    email = new_email() if email == "" else email
    body: dict[str, Any] = {"password": password, "display_name": "Test Member", **extra}
    if email:
        body["email"] = email
    if phone:
        body["phone"] = phone
    r = await client.post("/v1/auth/register", json=body)
    assert r.status_code == 201, r.text
    tokens = r.json()
    me = await client.get("/v1/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.status_code == 200, me.text
    return Member(
        id=me.json()["id"],
        email=email,
        phone=phone,
        password=password,
        access_token=tokens["access_token"],
        refresh_token=tokens["refresh_token"],
        session_id=tokens["session_id"],
    )


async def latest_message(rt: Runtime, to: str, *, sms: bool = False) -> dict[str, Any]:
    """The newest email (or SMS) queued to `to`, with its template context decrypted."""
    async with rt.db.sessionmaker() as session:
        event = await session.scalar(
            select(OutboxEvent)
            .where(
                OutboxEvent.topic == (SMS_TOPIC if sms else EMAIL_TOPIC),
                OutboxEvent.payload["to"].astext == to,
            )
            .order_by(OutboxEvent.id.desc())
            .limit(1)
        )
    assert event is not None, f"no message queued to {to}"
    return {**event.payload, "context": open_context(rt, event.payload["context"])}


async def latest_code(rt: Runtime, to: str, *, sms: bool = False) -> str:
    code: str = (await latest_message(rt, to, sms=sms))["context"]["code"]
    return code


@asynccontextmanager
async def asgi_client(app: FastAPI, ip: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client for an app built in a test (see the `app_factory` fixture)."""
    ip = ip or f"10.{random.randint(0, 255)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(ip, 50000)),
        base_url="http://test",
        headers={"X-Forwarded-For": ip},
    ) as c:
        yield c


@dataclass
class Staff(Member):
    role: str = "admin"
    totp_secret: str = ""

    def next_totp(self) -> str:
        """A code one step ahead: the server accepts ±1 step and never the same step twice, so this
        is always fresh after the code that was just used."""
        return pyotp.TOTP(self.totp_secret).at(time.time() + 30)


async def create_staff_user(
    rt: Runtime, *, role: Role = Role.admin, email: str | None = None, password: str = DEFAULT_PASSWORD
) -> tuple[str, str]:
    """A staff account made the way `referloop create-staff` makes it (no TOTP yet): (id, email)."""
    from referloop.identity.service.accounts import create_user

    email = email or new_email()
    async with rt.db.sessionmaker() as session, session.begin():
        user = await create_user(
            session, rt, email=email, phone=None, password=password, display_name="Test Staff", role=role
        )
        return str(user.id), email


async def create_staff(client: httpx.AsyncClient, rt: Runtime, *, role: Role = Role.admin) -> Staff:
    """A staff member who enrolled TOTP and signed in with a code: staff routes answer them."""
    user_id, email = await create_staff_user(rt, role=role)
    r = await client.post("/v1/auth/login", json={"login": email, "password": DEFAULT_PASSWORD})
    assert r.status_code == 200, r.text
    auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
    r = await client.post("/v1/auth/totp/enroll", headers=auth, json={"password": DEFAULT_PASSWORD})
    assert r.status_code == 200, r.text
    secret = r.json()["secret"]
    r = await client.post("/v1/auth/totp/confirm", headers=auth, json={"code": pyotp.TOTP(secret).now()})
    assert r.status_code == 200, r.text
    staff = Staff(
        id=user_id,
        email=email,
        phone=None,
        password=DEFAULT_PASSWORD,
        access_token="",
        refresh_token="",
        session_id="",
        role=role.value,
        totp_secret=secret,
    )
    r = await client.post(
        "/v1/auth/login", json={"login": email, "password": DEFAULT_PASSWORD, "totp_code": staff.next_totp()}
    )
    assert r.status_code == 200, r.text
    tokens = r.json()
    staff.access_token, staff.refresh_token = tokens["access_token"], tokens["refresh_token"]
    staff.session_id = tokens["session_id"]
    return staff


async def db_rows(rt: Runtime, sql: str, **params: Any) -> list[dict[str, Any]]:
    """Run one SQL statement in its own committed transaction; rows as dicts (empty if none)."""
    async with rt.db.sessionmaker() as session, session.begin():
        result = await session.execute(text(sql), params)
        return [dict(r._mapping) for r in result] if result.returns_rows else []


async def db_value(rt: Runtime, sql: str, **params: Any) -> Any:
    rows = await db_rows(rt, sql, **params)
    return next(iter(rows[0].values())) if rows else None


async def credit_member(rt: Runtime, member_id: str | uuid.UUID, amount: int, currency: str = "INR") -> None:
    """Put `amount` into a member's available balance through the ledger's API (an adjustment)."""
    from referloop import ledger

    async with rt.db.sessionmaker() as session, session.begin():
        await ledger.move(
            session,
            entry_type="test.credit",
            source=ledger.platform_account(ledger.AccountCode.adjustments, "tests"),
            destination=ledger.member_account(uuid.UUID(str(member_id))),
            amount=amount,
            currency=currency,
            idempotency_key=f"test-credit:{uuid.uuid4()}",
        )
