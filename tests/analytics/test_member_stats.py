"""`GET /v1/referrals/stats`: a member's own funnel from the rollups (clicks on their links and their
referrals' steps), with the staff funnel's filters, beside the all-time counts and balances."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from referloop.analytics.service.clicks import catch_up_clicks
from referloop.referrals.lifecycle.service.outcomes import OutcomeKind
from referloop.referrals.service.clicks import flush_all_clicks
from referloop.runtime import Runtime
from tests.analytics.helpers import deliver, lifecycle_events, report
from tests.factories import Member, new_email, register_member
from tests.referrals.helpers import BROWSER_UA, Admin, create_campaign, create_program, create_university

FUNNEL_KEYS = ("clicks", "invited", "signed_up", "applied", "enrolled", "rejected")


async def clicks_on(client: httpx.AsyncClient, member: Member, program_id: str, n: int) -> None:
    r = await client.get("/v1/referrals/links", params={"limit": 200}, headers=member.auth)
    slug = next(i for i in r.json()["items"] if i["program_id"] == program_id)["slug"]
    for _ in range(n):
        assert (await client.get(f"/r/{slug}", headers={"User-Agent": BROWSER_UA})).status_code == 302


async def invite(client: httpx.AsyncClient, member: Member, program_id: str) -> str:
    r = await client.post(
        "/v1/referrals",
        json={"program_id": program_id, "name": "Ravi Kumar", "email": new_email()},
        headers={**member.auth, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert r.status_code == 201, r.text
    referral_id: str = r.json()["id"]
    return referral_id


async def stats(client: httpx.AsyncClient, member: Member, **params: Any) -> dict[str, Any]:
    r = await client.get("/v1/referrals/stats", params=params, headers=member.auth)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def counts(totals: dict[str, Any]) -> dict[str, int]:
    return {k: totals[k] for k in FUNNEL_KEYS}


async def test_a_members_stats_show_their_own_funnel_and_not_another_members(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
):
    uni = await create_university(client, admin)
    program = await create_program(client, admin, uni["id"])
    other_program = await create_program(client, admin, uni["id"])
    campaign = await create_campaign(client, admin, [program["id"]])
    asha, bala = await register_member(client), await register_member(client)

    # Asha: 3 clicks and 2 referrals on the campaign's program (one enrols, one is rejected), and 1
    # click and 1 invitation on another program. Bala: 5 clicks and 1 enrolment on the same program.
    await clicks_on(client, asha, program["id"], 3)
    await clicks_on(client, asha, other_program["id"], 1)
    await clicks_on(client, bala, program["id"], 5)
    enrolled, rejected = await invite(client, asha, program["id"]), await invite(client, asha, program["id"])
    elsewhere = await invite(client, asha, other_program["id"])
    balas = await invite(client, bala, program["id"])
    for referral_id in (enrolled, balas):
        await report(runtime, uni["id"], referral_id, OutcomeKind.application_submitted)
        await report(runtime, uni["id"], referral_id, OutcomeKind.enrolled)
    await report(runtime, uni["id"], rejected, OutcomeKind.application_rejected)
    for event in await lifecycle_events(runtime, [enrolled, rejected, elsewhere, balas]):
        await deliver(runtime, event.topic, dict(event.payload), event.id)
    await flush_all_clicks(runtime)
    await catch_up_clicks(runtime, settle_seconds=0)

    mine = await stats(client, asha)
    # The fields the stats always had are still there, all time.
    assert mine["total"] == 3
    assert (mine["by_state"]["enrolled"], mine["by_state"]["rejected"], mine["by_state"]["invited"]) == (
        1,
        1,
        1,
    )
    assert (mine["converted"], mine["conversion_rate"]) == (1, 0.3333)
    funnel = mine["funnel"]
    today = datetime.now(UTC).date()
    assert (funnel["from"], funnel["to"], funnel["granularity"]) == (
        (today - timedelta(days=29)).isoformat(),
        today.isoformat(),
        "day",
    )
    assert funnel["filters"] == {"program_id": None, "campaign_id": None}
    expected = {"clicks": 4, "invited": 3, "signed_up": 1, "applied": 1, "enrolled": 1, "rejected": 1}
    assert counts(funnel["totals"]) == expected  # none of Bala's 5 clicks or his enrolment
    assert funnel["conversion"]["click_to_signup"] == 0.25
    assert funnel["conversion"]["application_to_enrolment"] == 1.0
    assert funnel["median_seconds"]["applied_to_enrolled"] is not None
    assert len(funnel["series"]) == 30
    assert funnel["series"][-1]["period_start"] == today.isoformat()
    assert counts(funnel["series"][-1]["counts"]) == expected
    assert all(p["counts"]["clicks"] == 0 for p in funnel["series"][:-1])

    # Filters, as on the staff funnel.
    by_program = (await stats(client, asha, program_id=program["id"]))["funnel"]
    assert by_program["filters"]["program_id"] == program["id"]
    assert counts(by_program["totals"]) == {**expected, "clicks": 3, "invited": 2}
    by_campaign = (await stats(client, asha, campaign_id=campaign["id"]))["funnel"]
    assert by_campaign["totals"]["invited"] == 2 and by_campaign["totals"]["enrolled"] == 1
    weekly = (await stats(client, asha, granularity="week", **{"from": today.isoformat()}))["funnel"]
    assert [p["period_start"] for p in weekly["series"]] == [
        (today - timedelta(days=today.weekday())).isoformat()
    ]
    assert counts(weekly["totals"]) == expected
    earlier = today - timedelta(days=3)
    before = await stats(
        client, asha, **{"from": (earlier - timedelta(days=7)).isoformat(), "to": earlier.isoformat()}
    )
    assert counts(before["funnel"]["totals"]) == dict.fromkeys(FUNNEL_KEYS, 0)
    assert before["total"] == 3  # the all-time fields ignore the funnel's range

    # Bala sees his own, and nothing of Asha's.
    his = await stats(client, bala)
    assert his["total"] == 1
    assert counts(his["funnel"]["totals"]) == {
        "clicks": 5,
        "invited": 1,
        "signed_up": 1,
        "applied": 1,
        "enrolled": 1,
        "rejected": 0,
    }
    # A new member sees zeros.
    nobody = await stats(client, await register_member(client))
    assert nobody["total"] == 0 and counts(nobody["funnel"]["totals"]) == dict.fromkeys(FUNNEL_KEYS, 0)


async def test_stats_refuse_a_bad_range(client: httpx.AsyncClient):
    member = await register_member(client)
    for params in (
        {"from": "2027-03-02", "to": "2027-03-01"},
        {"from": "2026-01-01", "to": "2027-03-01"},
        {"granularity": "month"},
        {"program_id": "not-a-uuid"},
    ):
        r = await client.get("/v1/referrals/stats", params=params, headers=member.auth)
        assert r.status_code == 422, params
        assert r.headers["content-type"].startswith("application/problem+json")
    assert (await client.get("/v1/referrals/stats")).status_code == 401
