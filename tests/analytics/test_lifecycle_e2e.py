"""End to end: the lifecycle's real events (an invitation through the API, partner reports through
the lifecycle service) and real clicks, consumed by the analytics consumers, shown by the funnel."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from referloop.analytics.service.clicks import catch_up_clicks
from referloop.analytics.service.funnel import member_funnel
from referloop.referrals.lifecycle.service.outcomes import OutcomeKind
from referloop.referrals.service.clicks import flush_all_clicks
from referloop.runtime import Runtime
from tests.analytics.helpers import CONSUMERS, deliver, lifecycle_events, report, staff_funnel
from tests.factories import new_email, register_member
from tests.referrals.helpers import BROWSER_UA, Admin, create_campaign, create_program, create_university


async def test_the_lifecycle_events_and_clicks_make_the_funnel(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
):
    uni = await create_university(client, admin)
    program = await create_program(client, admin, uni["id"])
    campaign = await create_campaign(client, admin, [program["id"]])
    member = await register_member(client)
    r = await client.get("/v1/referrals/links", params={"limit": 200}, headers=member.auth)
    slug = next(i for i in r.json()["items"] if i["program_id"] == program["id"])["slug"]
    for _ in range(4):
        assert (await client.get(f"/r/{slug}", headers={"User-Agent": BROWSER_UA})).status_code == 302

    referral_ids = []
    for name in ("Ravi Kumar", "Meera Iyer"):
        r = await client.post(
            "/v1/referrals",
            json={"program_id": program["id"], "name": name, "email": new_email()},
            headers={**member.auth, "Idempotency-Key": str(uuid.uuid4())},
        )
        assert r.status_code == 201, r.text
        referral_ids.append(r.json()["id"])
    enrolled, rejected = referral_ids
    await report(runtime, uni["id"], enrolled, OutcomeKind.application_submitted)
    await report(runtime, uni["id"], enrolled, OutcomeKind.enrolled)
    await report(runtime, uni["id"], rejected, OutcomeKind.application_rejected)

    events = await lifecycle_events(runtime, referral_ids)
    assert {e.topic for e in events} == set(CONSUMERS)
    # Delivered newest first (out of order), and each twice (a redelivery): counted once each.
    for event in [*reversed(events), *events]:
        await deliver(runtime, event.topic, dict(event.payload), event.id)
    await flush_all_clicks(runtime)
    await catch_up_clicks(runtime, settle_seconds=0)

    expected: dict[str, Any] = {
        "clicks": 4,
        "invited": 2,
        "signed_up": 1,  # implied by the application (the lead applied without signing up here)
        "applied": 1,
        "enrolled": 1,
        "rejected": 1,
    }
    for name, value in (
        ("program_id", program["id"]),
        ("campaign_id", campaign["id"]),
        ("university_id", uni["id"]),
        ("referrer_id", member.id),
    ):
        body = await staff_funnel(client, admin.access_token, **{name: value})
        assert {k: body["totals"][k] for k in expected} == expected, name
        assert body["conversion"]["application_to_enrolment"] == 1.0
    async with runtime.db.sessionmaker() as session:
        mine = await member_funnel(session, uuid.UUID(member.id))
    assert {k: mine.totals[k] for k in expected} == expected
    assert mine.median_seconds["applied_to_enrolled"] is not None
