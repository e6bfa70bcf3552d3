"""Helpers for the partner API tests: keys made by an admin, referrals made by members."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from tests.factories import Member, new_email, register_member
from tests.referrals.helpers import Admin, create_program, create_university

KEYS = "/v1/staff/partner-keys"


@dataclass
class Partner:
    university_id: str
    program_id: str
    key: str
    key_id: str

    def headers(self, idempotency_key: str | None = None) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.key}",
            "Idempotency-Key": idempotency_key or str(uuid.uuid4()),
        }


async def create_key(
    client: httpx.AsyncClient, admin: Admin, university_id: str, **extra: Any
) -> dict[str, Any]:
    body = {"university_id": university_id, "name": "Admissions CRM", "contact_email": new_email(), **extra}
    r = await client.post(KEYS, json=body, headers=admin.auth)
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


async def make_partner(client: httpx.AsyncClient, admin: Admin, **key_extra: Any) -> Partner:
    """A university with one program and an API key."""
    university = await create_university(client, admin)
    program = await create_program(client, admin, university["id"])
    key = await create_key(client, admin, university["id"], **key_extra)
    return Partner(university["id"], program["id"], key["key"], key["id"])


async def invite(
    client: httpx.AsyncClient, member: Member, program_id: str, email: str | None = None
) -> dict[str, Any]:
    """A referral in state invited, for a lead with this email."""
    r = await client.post(
        "/v1/referrals",
        json={"program_id": program_id, "name": "Asha Kumar", "email": email or new_email()},
        headers={**member.auth, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


async def new_member(client: httpx.AsyncClient) -> Member:
    return await register_member(client)


def outcome(kind: str, external_id: str | None = None, **match: Any) -> dict[str, Any]:
    return {
        "external_id": external_id or f"APP-{uuid.uuid4().hex[:10]}",
        "type": kind,
        "occurred_at": "2026-11-01T10:00:00Z",
        **match,
    }
