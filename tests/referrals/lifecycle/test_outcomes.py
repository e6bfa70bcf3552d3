"""Partner reports through `apply_partner_outcome`: matching (referral id, email, phone, click id),
out-of-order handling, notes, stale and refused reports, and referrals made from a share-link click."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx

from referloop.runtime import Runtime
from tests.factories import register_member
from tests.referrals.helpers import BROWSER_UA, Admin, sql
from tests.referrals.lifecycle.helpers import (
    invite,
    lead_email,
    make_catalogue,
    make_members,
    report,
    rewards,
    run_jobs,
)


async def history(rt: Runtime, referral_id: uuid.UUID) -> list[tuple[str | None, str, str]]:
    rows = await sql(
        rt,
        "SELECT from_state, to_state, actor_type FROM referral_events WHERE referral_id = :r ORDER BY id",
        r=referral_id,
    )
    return [(r["from_state"], r["to_state"], r["actor_type"]) for r in rows]


async def test_matching_by_phone_and_referral_id_and_an_accepted_application_is_noted(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
) -> None:
    cat = await make_catalogue(client, admin)
    (referrer,) = await make_members(runtime)
    by_phone = await invite(runtime, referrer, cat.program_id, phone="+919845012345")
    by_id = await invite(runtime, referrer, cat.program_id)

    r = await report(runtime, cat.university_id, "application_submitted", phone="+919845012345")
    assert (r.status, r.referral_id, r.state) == ("applied", by_phone, "applied")
    r = await report(runtime, cat.university_id, "application_accepted", phone="+919845012345")
    assert (r.status, r.state) == ("applied", "applied")
    assert await history(runtime, by_phone) == [
        (None, "invited", "member"),
        ("invited", "applied", "partner"),
        ("applied", "applied", "partner"),  # the acceptance, noted
    ]
    r = await report(runtime, cat.university_id, "application_submitted", phone="+919845012345")
    assert (r.status, r.state) == ("duplicate", "applied")

    r = await report(runtime, cat.university_id, "application_accepted", referral_id=by_id)
    assert (r.status, r.state) == ("applied", "applied")  # accepted implies applied


async def test_rejections_and_late_reports(client: httpx.AsyncClient, runtime: Runtime, admin: Admin) -> None:
    cat = await make_catalogue(client, admin)
    (referrer,) = await make_members(runtime)
    rejected, enrolled = lead_email(), lead_email()
    r1 = await invite(runtime, referrer, cat.program_id, email=rejected)
    r2 = await invite(runtime, referrer, cat.program_id, email=enrolled)

    assert (
        await report(runtime, cat.university_id, "application_rejected", email=rejected)
    ).state == "rejected"
    late = await report(runtime, cat.university_id, "enrolled", email=rejected)
    assert (late.status, late.state) == ("stale", "rejected")

    await report(runtime, cat.university_id, "enrolled", email=enrolled)
    after = await report(runtime, cat.university_id, "application_rejected", email=enrolled)
    assert (after.status, after.state) == ("stale", "enrolled")
    await run_jobs(runtime)
    assert await rewards(runtime, r1) == []
    assert [w["status"] for w in await rewards(runtime, r2)] == ["pending"]

    refused = await report(runtime, cat.university_id, "enrolled", email=enrolled, external_ref="\x00")
    assert refused.status == "refused"
    naive = await report(
        runtime,
        cat.university_id,
        "enrolled",
        email=enrolled,
        occurred_at=datetime.now(UTC).replace(tzinfo=None),
    )
    assert naive.status == "refused"
    assert (await report(runtime, cat.university_id, "enrolled")).status == "refused"  # nothing to match


async def test_an_unregistered_applicant_from_a_share_link_is_credited_to_the_links_owner(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
) -> None:
    cat = await make_catalogue(client, admin)
    referrer = await register_member(client)
    r = await client.get("/v1/referrals/links", params={"limit": 200}, headers=referrer.auth)
    slug = next(i["slug"] for i in r.json()["items"] if i["program_id"] == str(cat.program_id))
    r = await client.get(f"/r/{slug}", headers={"User-Agent": BROWSER_UA})
    assert r.status_code == 302
    click_id = parse_qs(urlsplit(r.headers["location"]).query)["rl_click"][0]

    other = await make_catalogue(client, admin)
    assert (await report(runtime, other.university_id, "enrolled", click_id=click_id)).status == "not_found"

    result = await report(runtime, cat.university_id, "enrolled", click_id=click_id, email=lead_email())
    assert (result.status, result.state) == ("applied", "enrolled")
    [row] = await sql(
        runtime, "SELECT member_id, source, click_id FROM referrals WHERE id = :r", r=result.referral_id
    )
    assert (str(row["member_id"]), row["source"], str(row["click_id"])) == (referrer.id, "click", click_id)
    again = await report(runtime, cat.university_id, "enrolled", click_id=click_id)
    assert (again.status, again.referral_id) == ("duplicate", result.referral_id)

    # A click too old for the campaign's window credits no one.
    old = await report(
        runtime,
        cat.university_id,
        "enrolled",
        click_id=str(uuid.uuid4()),
        occurred_at=datetime.now(UTC) - timedelta(days=1),
    )
    assert old.status == "not_found"
