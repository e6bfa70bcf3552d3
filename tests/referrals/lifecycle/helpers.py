"""Helpers for the lifecycle and rewards tests: a catalogue with a campaign and its reward rules
(made through the staff API), members, invitations, partner reports and the worker's reward jobs."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from referloop import ledger
from referloop.core.context import RequestContext
from referloop.core.ids import uuid7
from referloop.identity.models import User
from referloop.referrals.lifecycle.schemas import InviteRequest
from referloop.referrals.lifecycle.service import (
    OutcomeKind,
    OutcomeReport,
    OutcomeResult,
    apply_partner_outcome,
    invites,
)
from referloop.referrals.rewards.service.jobs import JobReport, run_until_idle
from referloop.runtime import Runtime
from tests.factories import Member
from tests.referrals.helpers import BROWSER_UA, Admin, create_campaign, create_program, create_university, sql

CTX = RequestContext(request_id="test")


@dataclass
class Catalogue:
    university_id: uuid.UUID
    program_id: uuid.UUID
    campaign_id: uuid.UUID
    fee: int


async def make_catalogue(
    client: httpx.AsyncClient,
    admin: Admin,
    *,
    rules: list[dict[str, Any]] | None = None,
    fee: int = 45_000_000,
    **campaign: Any,
) -> Catalogue:
    """A university, a program and an active campaign for it with `rules` (default: 1,000 INR to
    the referrer at enrolment, released 30 days after it)."""
    university = await create_university(client, admin)
    program = await create_program(client, admin, university["id"], fee={"amount": fee, "currency": "INR"})
    made = await create_campaign(client, admin, [program["id"]], **campaign)
    for rule in rules if rules is not None else [fixed("enrolled", "referrer", 100_000)]:
        await add_rule(client, admin, made["id"], rule)
    return Catalogue(uuid.UUID(university["id"]), uuid.UUID(program["id"]), uuid.UUID(made["id"]), fee)


def fixed(milestone: str, role: str, amount: int, **extra: Any) -> dict[str, Any]:
    return {
        "milestone": milestone,
        "role": role,
        "kind": "fixed",
        "amount": {"amount": amount, "currency": "INR"},
        **extra,
    }


async def add_rule(
    client: httpx.AsyncClient, admin: Admin, campaign_id: str | uuid.UUID, rule: dict[str, Any]
) -> dict[str, Any]:
    r = await client.post(f"/v1/staff/campaigns/{campaign_id}/reward-rules", json=rule, headers=admin.auth)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def make_members(rt: Runtime, n: int = 1) -> list[uuid.UUID]:
    """Members inserted directly (fast): the lifecycle needs a user row with an email."""
    ids = [uuid7() for _ in range(n)]
    async with rt.db.sessionmaker() as session, session.begin():
        session.add_all(
            User(
                id=i,
                email=f"r{i.hex}@example.com",
                password_hash="!",
                display_name="Referrer Test",
                referral_code=secrets.token_hex(4).upper(),
            )
            for i in ids
        )
    return ids


def lead_email() -> str:
    return f"lead.{uuid.uuid4().hex[:12]}@example.com"


async def invite(
    rt: Runtime,
    referrer_id: uuid.UUID,
    program_id: uuid.UUID,
    *,
    name: str = "Ravi Kumar",
    email: str | None = None,
    phone: str | None = None,
) -> uuid.UUID:
    if not email and not phone:
        email = lead_email()
    data = InviteRequest.model_validate(
        {
            "program_id": str(program_id),
            "name": name,
            **({"email": email} if email else {}),
            **({"phone": phone} if phone else {}),
        }
    )
    async with rt.db.sessionmaker() as session, session.begin():
        referral = await invites.invite(session, rt, referrer_id, data, CTX)
        return referral.id


async def report(
    rt: Runtime,
    university_id: uuid.UUID,
    kind: OutcomeKind | str,
    *,
    external_ref: str | None = None,
    occurred_at: datetime | None = None,
    **match: Any,
) -> OutcomeResult:
    """One partner report in its own transaction (as the partner API would make it)."""
    item = OutcomeReport(
        university_id=university_id,
        kind=OutcomeKind(kind),
        occurred_at=occurred_at or datetime.now(UTC),
        external_ref=external_ref or uuid.uuid4().hex,
        **match,
    )
    async with rt.db.sessionmaker() as session, session.begin():
        return await apply_partner_outcome(session, rt, item, CTX)


async def enrolled(rt: Runtime, cat: Any, referrer: uuid.UUID) -> tuple[uuid.UUID, str]:
    """A new lead invited by `referrer` to the catalogue's program and reported enrolled: the
    referral's id and the lead's email."""
    email = lead_email()
    referral = await invite(rt, referrer, cat.program_id, email=email)
    result = await report(rt, cat.university_id, "enrolled", email=email)
    assert result.status == "applied", result
    return referral, email


async def share_click(client: httpx.AsyncClient, referrer: Member, program_id: uuid.UUID) -> str:
    """A visitor (a browser) opens the referrer's share link for the program: the click id."""
    r = await client.get("/v1/referrals/links", params={"limit": 200}, headers=referrer.auth)
    slug = next(i["slug"] for i in r.json()["items"] if i["program_id"] == str(program_id))
    r = await client.get(f"/r/{slug}", headers={"User-Agent": BROWSER_UA})
    assert r.status_code == 302
    return parse_qs(urlsplit(r.headers["location"]).query)["rl_click"][0]


async def run_jobs(rt: Runtime, now: datetime | None = None) -> JobReport:
    return await run_until_idle(rt, now=now)


async def rewards(rt: Runtime, referral_id: uuid.UUID) -> list[dict[str, Any]]:
    return await sql(
        rt, "SELECT * FROM rewards WHERE referral_id = :r ORDER BY milestone, role", r=referral_id
    )


async def balance(rt: Runtime, member_id: uuid.UUID, currency: str = "INR") -> ledger.MemberBalance:
    async with rt.db.sessionmaker() as session:
        return await ledger.balance_of(session, member_id, currency)


async def owed(rt: Runtime, member_id: uuid.UUID, currency: str = "INR") -> int:
    async with rt.db.sessionmaker() as session:
        return -await ledger.platform_balance(
            session, ledger.AccountCode.receivables, currency, str(member_id)
        )


async def assert_ledger_sound(rt: Runtime) -> None:
    async with rt.db.sessionmaker() as session:
        result = await ledger.reconcile(session)
    assert result.ok, [str(d) for d in result.discrepancies]


async def state_of(rt: Runtime, referral_id: uuid.UUID) -> str:
    rows = await sql(rt, "SELECT state FROM referrals WHERE id = :r", r=referral_id)
    return str(rows[0]["state"])
