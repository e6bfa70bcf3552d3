"""Lifecycle events -> funnel counters: exactly once, whatever the duplicates and the order."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import httpx

from referloop.analytics.service.funnel import member_funnel
from referloop.runtime import Runtime
from tests.analytics.helpers import Referral, deliver, staff_funnel
from tests.referrals.helpers import Admin

CREATED, CHANGED = "referrals.referral_created", "referrals.state_changed"


def days_ago(n: int, hour: int = 10) -> datetime:
    return (datetime.now(UTC) - timedelta(days=n)).replace(hour=hour, minute=0, second=0, microsecond=0)


async def walk(rt: Runtime, ref: Referral, steps: list[tuple[str, datetime]]) -> None:
    """Deliver created (first step) then state_changed events along `steps`."""
    (first, at), *rest = steps
    await deliver(rt, CREATED, ref.created(first, at))
    previous = first
    for state, at in rest:
        await deliver(rt, CHANGED, ref.changed(previous, state, at))
        previous = state


async def test_a_referral_walking_the_funnel_shows_in_counts_rates_and_medians(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
):
    ref = Referral()
    await walk(
        runtime,
        ref,
        [
            ("invited", days_ago(5)),
            ("signed_up", days_ago(4)),
            ("applied", days_ago(3)),
            ("enrolled", days_ago(1)),
            ("rewarded", days_ago(1, hour=11)),
        ],
    )
    other = ref.sibling()  # signs up and is rejected: counted, but not further down the funnel
    await walk(runtime, other, [("signed_up", days_ago(3)), ("rejected", days_ago(2))])

    body = await staff_funnel(
        client, admin.access_token, referrer_id=ref.referrer_id, **{"from": str(days_ago(6).date())}
    )
    totals = body["totals"]
    assert {
        k: totals[k] for k in ("invited", "signed_up", "applied", "enrolled", "rewarded", "rejected")
    } == {
        "invited": 1,
        "signed_up": 2,
        "applied": 1,
        "enrolled": 1,
        "rewarded": 1,
        "rejected": 1,
    }
    assert body["conversion"]["signup_to_application"] == 0.5
    assert body["conversion"]["application_to_enrolment"] == 1.0
    assert body["conversion"]["click_to_signup"] is None  # no clicks: no rate, not a division by zero
    assert body["median_seconds"] == {
        "invited_to_signed_up": 86400.0,
        "signed_up_to_applied": 86400.0,
        "applied_to_enrolled": 2 * 86400.0,
        "enrolled_to_rewarded": 3600.0,
    }
    by_day = {p["period_start"]: p["counts"] for p in body["series"]}
    assert len(body["series"]) == 7  # one entry per day of the range (to: today), zeros included
    assert by_day[str(days_ago(3).date())]["applied"] == 1
    assert by_day[str(days_ago(3).date())]["signed_up"] == 1
    assert by_day[str(days_ago(1).date())]["enrolled"] == 1

    # The same referrals seen through each of the other filters.
    for name in ("program_id", "campaign_id", "university_id"):
        other_view = await staff_funnel(client, admin.access_token, **{name: getattr(ref, name)})
        assert other_view["totals"]["signed_up"] == 2, name
    nobody = await staff_funnel(client, admin.access_token, referrer_id=str(uuid.uuid4()))
    assert nobody["totals"]["signed_up"] == 0


async def test_replayed_and_duplicated_events_count_once(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
):
    ref = Referral()
    event_id = uuid.uuid4()
    payload = ref.changed("invited", "signed_up", days_ago(1))
    assert await deliver(runtime, CHANGED, payload, event_id) is True
    assert await deliver(runtime, CHANGED, payload, event_id) is False  # a redelivery: the inbox skips it
    # The lifecycle emitting the same transition twice (two event ids): the milestone makes it count once.
    assert await deliver(runtime, CHANGED, payload) is True
    # ... and so does a fraud hold lifted back to the same state.
    await deliver(runtime, CHANGED, ref.changed("signed_up", "fraud_hold", days_ago(1, hour=12)))
    await deliver(runtime, CHANGED, ref.changed("fraud_hold", "signed_up", days_ago(1, hour=13)))
    body = await staff_funnel(client, admin.access_token, referrer_id=ref.referrer_id)
    assert body["totals"]["signed_up"] == 1
    assert body["totals"]["fraud_hold"] == 1


async def test_concurrent_deliveries_of_one_step_count_once(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
):
    ref = Referral()
    payload = ref.changed("signed_up", "applied", days_ago(2))
    handled = await asyncio.gather(*(deliver(runtime, CHANGED, payload) for _ in range(10)))
    assert all(handled)  # ten distinct events, each handled...
    body = await staff_funnel(client, admin.access_token, referrer_id=ref.referrer_id)
    assert body["totals"]["applied"] == 1  # ...one application counted
    assert body["totals"]["signed_up"] == 1  # implied by the application


async def test_out_of_order_events_count_once_on_the_day_they_happened(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
):
    ref = Referral()
    # The partner's enrolment report is handled before the sign-up and application events.
    await deliver(runtime, CHANGED, ref.changed("applied", "enrolled", days_ago(1)))
    early = await staff_funnel(client, admin.access_token, referrer_id=ref.referrer_id)
    day1 = str(days_ago(1).date())
    counts = {p["period_start"]: p["counts"] for p in early["series"]}[day1]
    # Enrolment implies the steps before it: the funnel never narrows upwards.
    assert (counts["signed_up"], counts["applied"], counts["enrolled"]) == (1, 1, 1)
    assert early["median_seconds"]["applied_to_enrolled"] is None  # implied steps have no real time

    await deliver(runtime, CREATED, ref.created("signed_up", days_ago(6)))
    await deliver(runtime, CHANGED, ref.changed("signed_up", "applied", days_ago(4)))
    await deliver(runtime, CHANGED, ref.changed("signed_up", "applied", days_ago(4)))  # and once more
    body = await staff_funnel(client, admin.access_token, referrer_id=ref.referrer_id)
    assert {k: body["totals"][k] for k in ("signed_up", "applied", "enrolled")} == {
        "signed_up": 1,
        "applied": 1,
        "enrolled": 1,
    }
    by_day = {p["period_start"]: p["counts"] for p in body["series"]}
    # Each count moved to the day the step really happened.
    assert by_day[str(days_ago(6).date())]["signed_up"] == 1
    assert by_day[str(days_ago(4).date())]["applied"] == 1
    assert (by_day[day1]["signed_up"], by_day[day1]["applied"], by_day[day1]["enrolled"]) == (0, 0, 1)
    assert body["median_seconds"]["applied_to_enrolled"] == 3 * 86400.0


async def test_malformed_events_count_nothing(client: httpx.AsyncClient, runtime: Runtime, admin: Admin):
    ref = Referral()
    bad = ref.changed("invited", "signed_up", days_ago(1))
    await deliver(runtime, CHANGED, {**bad, "to_state": "teleported"})
    await deliver(runtime, CHANGED, {**bad, "at": "yesterday"})
    await deliver(runtime, CHANGED, {**bad, "referrer_id": None})
    body = await staff_funnel(client, admin.access_token, referrer_id=ref.referrer_id)
    assert all(v == 0 for v in body["totals"].values())


async def test_member_funnel_is_the_referrers_own(runtime: Runtime):
    ref = Referral()
    await walk(runtime, ref, [("signed_up", days_ago(3)), ("applied", days_ago(2))])
    await walk(runtime, Referral(), [("signed_up", days_ago(3))])  # someone else's
    async with runtime.db.sessionmaker() as session:
        report = await member_funnel(session, uuid.UUID(ref.referrer_id))
        ranged = await member_funnel(
            session, uuid.UUID(ref.referrer_id), first=days_ago(2).date(), last=days_ago(0).date()
        )
    assert (report.totals["signed_up"], report.totals["applied"]) == (1, 1)
    assert report.conversion["signup_to_application"] == 1.0
    assert report.median_seconds["signed_up_to_applied"] == 86400.0
    assert (ranged.totals["signed_up"], ranged.totals["applied"]) == (0, 1)


async def test_weekly_series_sums_the_days(client: httpx.AsyncClient, runtime: Runtime, admin: Admin):
    ref = Referral()
    for n in range(0, 14):
        await walk(runtime, ref.sibling() if n else ref, [("invited", days_ago(n))])
    body = await staff_funnel(
        client,
        admin.access_token,
        referrer_id=ref.referrer_id,
        granularity="week",
        **{"from": str(days_ago(13).date()), "to": str(days_ago(0).date())},
    )
    assert body["totals"]["invited"] == 14
    assert sum(p["counts"]["invited"] for p in body["series"]) == 14
    assert all(datetime.fromisoformat(p["period_start"]).weekday() == 0 for p in body["series"])


async def test_staff_only_and_bounded_ranges(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin, support
):
    from tests.factories import register_member

    member = await register_member(client)
    r = await client.get("/v1/staff/analytics/funnel", headers=member.auth)
    assert r.status_code == 403
    assert r.headers["content-type"].startswith("application/problem+json")
    r = await client.get("/v1/staff/analytics/funnel")
    assert r.status_code == 401
    assert (await staff_funnel(client, support.access_token))["granularity"] == "day"  # support may read it

    auth = {"Authorization": f"Bearer {admin.access_token}"}
    r = await client.get(
        "/v1/staff/analytics/funnel", params={"from": "2027-01-10", "to": "2027-01-01"}, headers=auth
    )
    assert r.status_code == 422
    r = await client.get(
        "/v1/staff/analytics/funnel", params={"from": "2020-01-01", "to": "2027-01-01"}, headers=auth
    )
    assert r.status_code == 422
    assert "366" in r.json()["detail"]
    r = await client.get(
        "/v1/staff/analytics/funnel",
        params={"from": "2025-01-01", "to": "2026-12-31", "granularity": "week"},
        headers=auth,
    )
    assert r.status_code == 200
    assert len(r.json()["series"]) == 105
    # The calendar's edges (found by the fuzz): a `to` in year 1 used to overflow into a 500.
    for params in ({"to": "0001-01-05"}, {"to": "0001-01-05", "granularity": "week"}, {"to": "9999-12-31"}):
        r = await client.get("/v1/staff/analytics/funnel", params=params, headers=auth)
        assert r.status_code == 200, (params, r.text)
    assert r.json()["series"][-1]["period_start"] == "9999-12-31"


async def test_a_signup_credited_by_code_alone_counts_for_the_referrer(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
):
    ref = Referral(program_id=None, university_id=None, campaign_id=None)
    await deliver(runtime, CREATED, ref.created("signed_up", days_ago(1)))
    await deliver(runtime, CREATED, ref.created("signed_up", days_ago(1)))
    body = await staff_funnel(client, admin.access_token, referrer_id=ref.referrer_id)
    assert body["totals"]["signed_up"] == 1


async def test_a_program_named_later_takes_the_referrals_earlier_steps_along(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
):
    ref = Referral(program_id=None, university_id=None, campaign_id=None)
    await deliver(runtime, CREATED, ref.created("signed_up", days_ago(3)))
    # The partner's application report names the program (the lifecycle adopts it).
    named = Referral(
        ref.referrer_id, str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4()), ref.referral_id
    )
    await deliver(runtime, CHANGED, named.changed("signed_up", "applied", days_ago(1)))
    body = await staff_funnel(client, admin.access_token, program_id=named.program_id)
    assert (body["totals"]["signed_up"], body["totals"]["applied"]) == (1, 1)
    assert body["median_seconds"]["signed_up_to_applied"] == 2 * 86400.0
    whole = await staff_funnel(client, admin.access_token, referrer_id=ref.referrer_id)
    assert (whole["totals"]["signed_up"], whole["totals"]["applied"]) == (1, 1)  # moved, not copied


async def test_ranges_at_the_ends_of_the_calendar_answer(client: httpx.AsyncClient, admin: Admin):
    for params in (
        {"from": "9999-12-25", "to": "9999-12-31"},
        {"from": "9999-12-20", "to": "9999-12-31", "granularity": "week"},
        {"from": "0001-01-01", "to": "0001-01-09", "granularity": "week"},
    ):
        body = await staff_funnel(client, admin.access_token, **params)
        assert body["series"][-1]["period_start"] <= params["to"]
        assert body["totals"]["clicks"] == 0


async def test_breakdown_ranks_programs_of_a_campaign_page_by_page(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
):
    campaign = str(uuid.uuid4())
    referrer = str(uuid.uuid4())
    programs = [Referral(referrer_id=referrer, campaign_id=campaign) for _ in range(3)]  # a program each
    for program, enrolments in zip(programs, (2, 3, 1), strict=True):
        for _ in range(enrolments):
            one = program.sibling()
            await walk(runtime, one, [("applied", days_ago(2)), ("enrolled", days_ago(1))])
    await walk(runtime, Referral(), [("applied", days_ago(2)), ("enrolled", days_ago(1))])  # another campaign

    auth = {"Authorization": f"Bearer {admin.access_token}"}
    params = {"by": "program", "campaign_id": campaign, "order_by": "enrolled", "limit": 2}
    r = await client.get("/v1/staff/analytics/funnel/breakdown", params=params, headers=auth)
    assert r.status_code == 200, r.text
    first = r.json()
    assert [(i["key"], i["counts"]["enrolled"]) for i in first["items"]] == [
        (programs[1].program_id, 3),
        (programs[0].program_id, 2),
    ]
    assert first["items"][0]["conversion"]["application_to_enrolment"] == 1.0
    r = await client.get(
        "/v1/staff/analytics/funnel/breakdown",
        params={**params, "cursor": first["next_cursor"]},
        headers=auth,
    )
    second = r.json()
    assert [(i["key"], i["counts"]["enrolled"]) for i in second["items"]] == [(programs[2].program_id, 1)]
    assert second["next_cursor"] is None

    r = await client.get(
        "/v1/staff/analytics/funnel/breakdown",
        params={"by": "referrer", "campaign_id": campaign},
        headers=auth,
    )
    assert [(i["key"], i["counts"]["enrolled"]) for i in r.json()["items"]] == [(programs[0].referrer_id, 6)]
    for bad in (
        {"by": "planet"},
        {"by": "program", "order_by": "vibes"},
        {"by": "program", "cursor": "bm9wZQ"},
    ):
        r = await client.get("/v1/staff/analytics/funnel/breakdown", params=bad, headers=auth)
        assert r.status_code == 422, bad
