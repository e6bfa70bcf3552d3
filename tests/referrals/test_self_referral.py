"""Refused referrals leave nothing behind: a self-referral (the same phone, the same mailbox) or a
duplicate lead writes no referral and no ledger entry, and the referrer's stats stay empty, where the
same path for a genuine referee makes a referral and pending money (so the assertions can fail).

The campaign pays the referrer at sign-up, so an attributed sign-up alone moves money."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from referloop.core.ids import uuid7
from referloop.referrals.lifecycle.tasks import handle_signup_attributed
from referloop.referrals.tasks import handle_user_registered
from referloop.runtime import Runtime
from tests.factories import Member, new_email, new_phone, register_member
from tests.referrals.helpers import BROWSER_UA, Admin, sql, uniq
from tests.referrals.lifecycle.helpers import Catalogue, fixed, lead_email, make_catalogue, run_jobs

SIGNUP_REWARD = 50_000


@pytest.fixture
async def cat(client: httpx.AsyncClient, admin: Admin) -> Catalogue:
    return await make_catalogue(client, admin, rules=[fixed("signed_up", "referrer", SIGNUP_REWARD)])


async def share_click(client: httpx.AsyncClient, referrer: Member, cat: Catalogue) -> str:
    r = await client.get("/v1/referrals/links", params={"limit": 200}, headers=referrer.auth)
    slug = next(i["slug"] for i in r.json()["items"] if i["program_id"] == str(cat.program_id))
    r = await client.get(f"/r/{slug}", headers={"User-Agent": BROWSER_UA})
    assert r.status_code == 302
    return parse_qs(urlsplit(r.headers["location"]).query)["rl_click"][0]


async def code_of(client: httpx.AsyncClient, member: Member) -> str:
    code: str = (await client.get("/v1/me", headers=member.auth)).json()["referral_code"]
    return code


async def run_worker(rt: Runtime, referee_id: str) -> None:
    """What the worker does after a sign-up: attribute it, make the referral, grant the rewards."""
    for row in await sql(
        rt,
        "SELECT payload FROM outbox_events WHERE topic = 'identity.user_registered' AND payload->>'user_id' = :u",
        u=referee_id,
    ):
        async with rt.db.sessionmaker() as session, session.begin():
            await handle_user_registered(session, rt, uuid7(), row["payload"])
    for row in await sql(
        rt,
        "SELECT payload FROM outbox_events WHERE topic = 'referrals.signup_attributed'"
        " AND payload->>'referee_id' = :u",
        u=referee_id,
    ):
        async with rt.db.sessionmaker() as session, session.begin():
            await handle_signup_attributed(session, rt, uuid7(), row["payload"])
    await run_jobs(rt)


async def referrals_of(rt: Runtime, member: Member) -> list[dict[str, Any]]:
    return await sql(rt, "SELECT * FROM referrals WHERE member_id = :m", m=member.id)


async def ledger_postings_of(rt: Runtime, *member_ids: str) -> list[dict[str, Any]]:
    return await sql(
        rt, "SELECT * FROM ledger_postings WHERE member_id = ANY(:m)", m=[uuid.UUID(m) for m in member_ids]
    )


async def stats(client: httpx.AsyncClient, member: Member) -> dict[str, Any]:
    r = await client.get("/v1/referrals/stats", headers=member.auth)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def assert_nothing_for(client: httpx.AsyncClient, rt: Runtime, referrer: Member, *others: str) -> None:
    """No referral, no ledger posting, and empty stats for the referrer (and no posting for `others`)."""
    assert await referrals_of(rt, referrer) == []
    assert await ledger_postings_of(rt, referrer.id, *others) == []
    seen = await stats(client, referrer)
    assert (seen["total"], seen["earnings"]) == (0, [])


async def assert_genuine_referee_is_paid(
    client: httpx.AsyncClient, rt: Runtime, referrer: Member, cat: Catalogue
) -> None:
    """The control: someone else through the same link makes a referral and pending money."""
    other = await register_member(
        client, phone=new_phone(), click_id=await share_click(client, referrer, cat)
    )
    await run_worker(rt, other.id)
    [referral] = await referrals_of(rt, referrer)
    assert (str(referral["referee_id"]), referral["state"]) == (other.id, "signed_up")
    assert len(await ledger_postings_of(rt, referrer.id)) == 1
    seen = await stats(client, referrer)
    assert seen["total"] == 1
    assert seen["earnings"][0]["pending"] == {"amount": SIGNUP_REWARD, "currency": "INR"}


async def test_signing_up_with_the_referrers_phone_is_refused_and_writes_nothing(
    client: httpx.AsyncClient, runtime: Runtime, cat: Catalogue
):
    phone = new_phone()  # +919XXXXXXXXX
    referrer = await register_member(client, phone=phone)
    click_id = await share_click(client, referrer, cat)
    email = new_email()
    # The same number written another way, with the referrer's link and code.
    same_phone = f"+91 {phone[3:8]} {phone[8:]}"
    r = await client.post(
        "/v1/auth/register",
        json={
            "email": email,
            "phone": same_phone,
            "password": "correct horse battery staple",
            "display_name": "Second Me",
            "referral_code": await code_of(client, referrer),
            "click_id": click_id,
        },
    )
    assert r.status_code == 409, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "account_exists"
    assert await sql(runtime, "SELECT 1 FROM users WHERE email = :e", e=email) == []
    await run_jobs(runtime)
    await assert_nothing_for(client, runtime, referrer)

    await assert_genuine_referee_is_paid(client, runtime, referrer, cat)


async def test_signing_up_with_the_referrers_gmail_mailbox_is_refused_and_writes_nothing(
    client: httpx.AsyncClient, runtime: Runtime, cat: Catalogue
):
    local = f"asha{uniq()}"
    referrer = await register_member(client, email=f"{local[:3]}.{local[3:]}@gmail.com")
    # Another account for the same mailbox (dots, +tag, googlemail), through the referrer's link.
    referee = await register_member(
        client,
        email=f"{local}+again@googlemail.com",
        referral_code=await code_of(client, referrer),
        click_id=await share_click(client, referrer, cat),
    )
    await run_worker(runtime, referee.id)
    assert await sql(runtime, "SELECT 1 FROM attributions WHERE referee_id = :r", r=referee.id) == []
    assert await sql(runtime, "SELECT 1 FROM referrals WHERE referee_id = :r", r=referee.id) == []
    await assert_nothing_for(client, runtime, referrer, referee.id)

    await assert_genuine_referee_is_paid(client, runtime, referrer, cat)


async def invite(client: httpx.AsyncClient, member: Member, cat: Catalogue, **body: Any) -> httpx.Response:
    payload = {"program_id": str(cat.program_id), "name": "Ravi Kumar", **body}
    return await client.post(
        "/v1/referrals", json=payload, headers={**member.auth, "Idempotency-Key": str(uuid.uuid4())}
    )


async def test_a_duplicate_lead_writes_no_referral_and_no_ledger_entry(
    client: httpx.AsyncClient, runtime: Runtime, cat: Catalogue
):
    first, second = await register_member(client), await register_member(client)
    email, phone = lead_email(), new_phone()
    assert (await invite(client, first, cat, email=email)).status_code == 201
    assert (await invite(client, first, cat, phone=phone)).status_code == 201
    before = await sql(runtime, "SELECT count(*) AS n FROM outbox_events")
    for who, body in (
        (first, {"email": email.upper()}),
        (second, {"email": email}),
        (second, {"phone": phone}),
        (second, {"email": lead_email(), "phone": phone}),
    ):
        r = await invite(client, who, cat, **body)
        assert r.status_code == 409, (body, r.text)
        assert r.json()["code"] == "duplicate_lead"
    await run_jobs(runtime)
    assert len(await referrals_of(runtime, first)) == 2
    assert await sql(runtime, "SELECT count(*) AS n FROM outbox_events") == before
    assert await ledger_postings_of(runtime, first.id) == []
    await assert_nothing_for(client, runtime, second)


async def test_inviting_yourself_by_email_or_phone_writes_no_referral_and_no_ledger_entry(
    client: httpx.AsyncClient, runtime: Runtime, cat: Catalogue
):
    phone = new_phone()
    member = await register_member(client, phone=phone)
    assert member.email is not None
    local, domain = member.email.split("@")
    for body in ({"email": f"{local.upper()}+me@{domain}"}, {"phone": f"+91 {phone[3:]}"}):
        r = await invite(client, member, cat, **body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["code"] == "self_referral"
    await run_jobs(runtime)
    await assert_nothing_for(client, runtime, member)
