"""Plain async helpers that make test data through the public API (or, where noted, directly)."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import select

from referloop.core.outbox.models import OutboxEvent
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
    client: httpx.AsyncClient, *, email: str | None = "", phone: str | None = None,
    password: str = DEFAULT_PASSWORD, **extra: Any,
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
    return Member(id=me.json()["id"], email=email, phone=phone, password=password,
                  access_token=tokens["access_token"], refresh_token=tokens["refresh_token"],
                  session_id=tokens["session_id"])


async def latest_message(rt: Runtime, to: str, *, sms: bool = False) -> dict[str, Any]:
    """The newest email (or SMS) queued to `to`, with its template context decrypted."""
    async with rt.db.sessionmaker() as session:
        event = await session.scalar(
            select(OutboxEvent)
            .where(OutboxEvent.topic == (SMS_TOPIC if sms else EMAIL_TOPIC), OutboxEvent.payload["to"].astext == to)
            .order_by(OutboxEvent.id.desc())
            .limit(1)
        )
    assert event is not None, f"no message queued to {to}"
    return {**event.payload, "context": open_context(rt, event.payload["context"])}


async def latest_code(rt: Runtime, to: str, *, sms: bool = False) -> str:
    code: str = (await latest_message(rt, to, sms=sms))["context"]["code"]
    return code
