"""Partner look-ups: one referral with its timeline, a filtered page of them; only ever the key's own
university's, the referee masked as the member API masks them, every call audited."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from referloop.runtime import Runtime
from tests.factories import new_email
from tests.referrals.helpers import Admin, create_program, sql
from tests.referrals.partner.helpers import (
    KEYS,
    Partner,
    invite,
    make_partner,
    new_member,
    outcome,
)

REFERRALS = "/partner/v1/referrals"


def auth(partner: Partner) -> dict[str, str]:
    return {"Authorization": f"Bearer {partner.key}"}


async def list_all(client: httpx.AsyncClient, partner: Partner, **params: Any) -> list[dict[str, Any]]:
    """Every page, following next_cursor."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(50):
        r = await client.get(
            REFERRALS, params={**params, **({"cursor": cursor} if cursor else {})}, headers=auth(partner)
        )
        assert r.status_code == 200, r.text
        items += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("the pages never ended")


async def set_updated_at(runtime: Runtime, referral_id: str, at: datetime) -> None:
    await sql(runtime, "UPDATE referrals SET updated_at = :t WHERE id = :r", t=at, r=uuid.UUID(referral_id))


async def test_a_key_of_university_a_never_sees_university_b_referrals(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
) -> None:
    partner_a = await make_partner(client, admin)
    partner_b = await make_partner(client, admin)
    member = await new_member(client)
    referral_a = await invite(client, member, partner_a.program_id)
    referral_b = await invite(client, member, partner_b.program_id)

    r = await client.get(f"{REFERRALS}/{referral_b['id']}", headers=auth(partner_a))
    unknown = await client.get(f"{REFERRALS}/{uuid.uuid4()}", headers=auth(partner_a))
    assert r.status_code == unknown.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    # The same answer for another university's referral as for one that does not exist.
    same = ("type", "title", "status", "code", "detail")
    assert {k: r.json().get(k) for k in same} == {k: unknown.json().get(k) for k in same}

    assert [x["id"] for x in await list_all(client, partner_a)] == [referral_a["id"]]
    assert [x["id"] for x in await list_all(client, partner_b)] == [referral_b["id"]]
    # Filtering by B's program from A's key finds nothing either.
    assert await list_all(client, partner_a, program_id=partner_b.program_id) == []

    r = await client.get(f"{REFERRALS}/{referral_b['id']}", headers=auth(partner_b))
    assert r.status_code == 200 and r.json()["id"] == referral_b["id"]
    # A refused look-up leaves no audit row; a successful one leaves one, about the referral.
    rows = await sql(
        runtime,
        "SELECT actor_id, target_type, target_id FROM audit_log WHERE action = 'partner.referral_viewed'"
        " AND target_id = :t",
        t=referral_b["id"],
    )
    assert [(str(x["actor_id"]), x["target_type"]) for x in rows] == [(partner_b.key_id, "referral")]


async def test_one_referral_with_its_timeline_and_the_referee_masked(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
) -> None:
    partner = await make_partner(client, admin)
    member = await new_member(client)
    email = new_email()
    r = await client.post(
        "/v1/referrals",
        json={
            "program_id": partner.program_id,
            "name": "Asha Kumar",
            "email": email,
            "phone": "+919812345678",
        },
        headers={**member.auth, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert r.status_code == 201, r.text
    referral = r.json()
    r = await client.post(
        "/partner/v1/outcomes",
        json={"items": [outcome("application_submitted", referral_id=referral["id"])]},
        headers=partner.headers(),
    )
    assert r.json()["items"][0]["status"] == "applied"

    r = await client.get(f"{REFERRALS}/{referral['id']}", headers=auth(partner))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == referral["id"] and body["program_id"] == partner.program_id
    assert body["state"] == "applied"
    assert body["created_at"] and body["updated_at"] and body["state_changed_at"]
    assert [(t["from_state"], t["to_state"], t["actor"]) for t in body["timeline"]] == [
        (None, "invited", "member"),
        ("invited", "applied", "partner"),
    ]
    assert all(t["occurred_at"] for t in body["timeline"])
    # As the member API shows them: first name and initial, nothing else.
    member_view = (await client.get(f"/v1/referrals/{referral['id']}", headers=member.auth)).json()
    assert body["referee"] == member_view["referee"] == {"name": "Asha K.", "registered": False}
    for secret in (email, email.split("@")[0], "9812345678", "Kumar"):
        assert secret.lower() not in r.text.lower()
    # The list masks the same way.
    (listed,) = await list_all(client, partner)
    assert listed["referee"] == body["referee"] and "timeline" not in listed
    assert {k: v for k, v in body.items() if k != "timeline"} == listed
    for secret in (email, "9812345678", "Kumar"):
        assert secret.lower() not in str(listed).lower()


async def test_filters_and_pagination(client: httpx.AsyncClient, runtime: Runtime, admin: Admin) -> None:
    partner = await make_partner(client, admin)
    other_program = await create_program(client, admin, partner.university_id)
    member = await new_member(client)
    made = [await invite(client, member, partner.program_id) for _ in range(4)]
    made.append(await invite(client, member, other_program["id"]))
    ids = [x["id"] for x in made]
    r = await client.post(
        "/partner/v1/outcomes",
        json={"items": [outcome("application_submitted", referral_id=ids[1])]},
        headers=partner.headers(),
    )
    assert r.json()["items"][0]["status"] == "applied"
    # Known change times; two share one, so the id orders them.
    base = datetime(2026, 11, 1, 12, tzinfo=UTC)
    times = [base, base + timedelta(hours=1), base + timedelta(hours=2), base + timedelta(hours=2), base]
    for referral_id, at in zip(ids, times, strict=True):
        await set_updated_at(runtime, referral_id, at)
    newest_first = [i for _, i in sorted(zip(times, ids, strict=True), reverse=True)]

    # Pages of two: every referral once, most recently changed first, then by id.
    r = await client.get(REFERRALS, params={"limit": 2}, headers=auth(partner))
    assert r.status_code == 200 and len(r.json()["items"]) == 2 and r.json()["next_cursor"]
    paged = await list_all(client, partner, limit=2)
    assert [x["id"] for x in paged] == newest_first
    assert [x["id"] for x in await list_all(client, partner)] == newest_first  # one page

    # Filters, alone and together with pagination.
    assert [x["id"] for x in await list_all(client, partner, state="applied")] == [ids[1]]
    assert [x["id"] for x in await list_all(client, partner, state="invited", limit=1)] == [
        i for i in newest_first if i != ids[1]
    ]
    assert [x["id"] for x in await list_all(client, partner, program_id=other_program["id"])] == [ids[4]]
    since = (base + timedelta(hours=1)).isoformat()
    assert [x["id"] for x in await list_all(client, partner, updated_since=since, limit=1)] == [
        i for i in newest_first if i in (ids[1], ids[2], ids[3])
    ]
    assert (
        await list_all(client, partner, updated_since=since, program_id=other_program["id"], state="invited")
        == []
    )
    # A change after a sync shows up in the next one.
    later = datetime.now(UTC)
    r = await client.post(
        "/partner/v1/outcomes",
        json={"items": [outcome("application_submitted", referral_id=ids[4])]},
        headers=partner.headers(),
    )
    assert r.json()["items"][0]["status"] == "applied"
    synced = await list_all(client, partner, updated_since=(later - timedelta(seconds=1)).isoformat())
    assert [(x["id"], x["state"]) for x in synced] == [(ids[4], "applied")]

    rows = await sql(
        runtime,
        "SELECT after FROM audit_log WHERE actor_id = :k AND action = 'partner.referrals_listed'"
        " ORDER BY created_at DESC, id DESC LIMIT 1",
        k=uuid.UUID(partner.key_id),
    )
    assert rows[0]["after"]["items"] == 1 and rows[0]["after"]["method"] == "GET"


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 201},
        {"state": "graduated"},
        {"program_id": "not-a-uuid"},
        {"updated_since": "2026-11-01T10:00:00"},  # no time zone
        {"updated_since": "yesterday"},
        {"cursor": "not a cursor"},
        {"cursor": "bm9wZQ"},  # base64 of something this API never returned
        # ["0001-01-01T00:00:00+14:00", <uuid>]: a time before year 1 in UTC, which the driver fails on
        {
            "cursor": "WyIwMDAxLTAxLTAxVDAwOjAwOjAwKzE0OjAwIiwiMDE4OTAwMDAtMDAwMC03MDAwLTgwMDAtMDAwMDAwMDAwMDAwIl0"
        },
    ],
)
async def test_bad_parameters_answer_422_problems(
    client: httpx.AsyncClient, admin: Admin, params: dict[str, Any]
) -> None:
    partner = await make_partner(client, admin)
    r = await client.get(REFERRALS, params=params, headers=auth(partner))
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    r = await client.get(f"{REFERRALS}/not-a-uuid", headers=auth(partner))
    assert r.status_code == 422


async def test_revoked_key_gets_401(client: httpx.AsyncClient, admin: Admin) -> None:
    partner = await make_partner(client, admin)
    referral = await invite(client, await new_member(client), partner.program_id)
    assert (await client.get(f"{REFERRALS}/{referral['id']}", headers=auth(partner))).status_code == 200
    r = await client.post(f"{KEYS}/{partner.key_id}/revoke", json={"reason": "leaked"}, headers=admin.auth)
    assert r.status_code == 200

    for url in (REFERRALS, f"{REFERRALS}/{referral['id']}"):
        r = await client.get(url, headers=auth(partner))
        assert r.status_code == 401 and r.json()["code"] == "invalid_api_key"
        assert r.headers["content-type"].startswith("application/problem+json")
    r = await client.get(REFERRALS)  # no key at all
    assert r.status_code == 401
