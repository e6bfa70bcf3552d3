"""Campaigns: staff CRUD, the state machine, and which campaign applies."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from referloop.referrals.service.campaigns import choose_campaign
from referloop.referrals.service.members import MemberFacts
from referloop.runtime import Runtime
from tests.factories import Member, latest_code, new_email, new_phone, register_member
from tests.referrals.helpers import (
    Admin,
    audit_actions,
    create_campaign,
    create_program,
    create_university,
    sql,
)


def facts(**overrides: object) -> MemberFacts:
    values: dict[str, object] = {
        "id": uuid.uuid4(),
        "referral_code": "ABCDEFGH",
        "email": "a@example.com",
        "phone": None,
        "country": "IN",
        "email_verified": True,
        "phone_verified": False,
        "kyc_status": "none",
        **overrides,
    }
    return MemberFacts(**values)  # type: ignore[arg-type]


@pytest.fixture
async def program(client: httpx.AsyncClient, admin: Admin) -> dict:
    uni = await create_university(client, admin)
    return await create_program(client, admin, uni["id"])


async def test_campaign_is_created_as_draft_with_budget_and_eligibility(
    client: httpx.AsyncClient, admin: Admin, program: dict, runtime: Runtime
):
    campaign = await create_campaign(
        client,
        admin,
        [program["id"]],
        activate=False,
        priority=5,
        attribution_window_days=14,
        budget_total={"amount": 50_000_000, "currency": "INR"},
        per_referrer_cap={"amount": {"amount": 1_000_000, "currency": "INR"}, "period": "month"},
        eligibility={"countries": ["in", "NP"], "require_email_verified": True, "kyc_status": "verified"},
    )
    assert campaign["state"] == "draft"
    assert campaign["allowed_transitions"] == ["active", "ended"]
    assert campaign["program_ids"] == [program["id"]]
    assert campaign["budget_total"] == {"amount": 50_000_000, "currency": "INR"}
    assert campaign["per_referrer_cap"] == {
        "amount": {"amount": 1_000_000, "currency": "INR"},
        "period": "month",
    }
    assert campaign["eligibility"] == {
        "countries": ["IN", "NP"],
        "require_email_verified": True,
        "require_phone_verified": False,
        "kyc_status": "verified",
        "min_member_level": None,
    }
    assert await audit_actions(runtime, campaign["id"]) == ["referrals.campaign_created"]

    got = await client.get(f"/v1/staff/campaigns/{campaign['id']}", headers=admin.auth)
    assert got.json() == campaign
    listed = await client.get("/v1/staff/campaigns", params={"program_id": program["id"]}, headers=admin.auth)
    assert [c["id"] for c in listed.json()["items"]] == [campaign["id"]]


async def test_campaign_input_is_validated(client: httpx.AsyncClient, admin: Admin, program: dict):
    now = datetime.now(UTC)
    base = {"name": "X", "program_ids": [program["id"]], "starts_at": now.isoformat(), "currency": "INR"}
    for bad in (
        {"ends_at": (now - timedelta(days=1)).isoformat()},
        {"budget_total": {"amount": 100, "currency": "USD"}},
        {"program_ids": []},
        {"attribution_window_days": 0},
        {"eligibility": {"min_member_level": 0}},
        {"eligibility": {"min_member_level": 1001}},
        {"eligibility": {"min_member_level": "2"}},
        {"starts_at": "2027-01-01T00:00:00"},
    ):
        r = await client.post("/v1/staff/campaigns", json={**base, **bad}, headers=admin.auth)
        assert r.status_code == 422, (bad, r.text)
    r = await client.post(
        "/v1/staff/campaigns", json={**base, "program_ids": [str(uuid.uuid4())]}, headers=admin.auth
    )
    assert r.status_code == 404


async def test_state_machine_walks_the_allowed_path(
    client: httpx.AsyncClient, admin: Admin, program: dict, runtime: Runtime
):
    campaign = await create_campaign(client, admin, [program["id"]], activate=False)
    url = f"/v1/staff/campaigns/{campaign['id']}/state"
    for state, allowed in (
        ("active", ["ended", "paused"]),
        ("paused", ["active", "ended"]),
        ("active", ["ended", "paused"]),
        ("ended", []),
    ):
        r = await client.post(url, json={"state": state}, headers=admin.auth)
        assert r.status_code == 200, r.text
        assert r.json()["state"] == state and r.json()["allowed_transitions"] == allowed
    assert r.json()["activated_at"] and r.json()["ended_at"]
    rows = await sql(
        runtime,
        "SELECT before, after FROM audit_log WHERE target_id = :t"
        " AND action = 'referrals.campaign_state_changed' ORDER BY created_at, id",
        t=campaign["id"],
    )
    assert [(row["before"]["state"], row["after"]["state"]) for row in rows] == [
        ("draft", "active"),
        ("active", "paused"),
        ("paused", "active"),
        ("active", "ended"),
    ]


async def test_a_retried_state_change_answers_the_first_result(
    client: httpx.AsyncClient, admin: Admin, program: dict, runtime: Runtime
):
    campaign = await create_campaign(client, admin, [program["id"]], activate=False)
    url = f"/v1/staff/campaigns/{campaign['id']}/state"
    headers = admin.auth  # one Idempotency-Key for both tries
    first = await client.post(url, json={"state": "active"}, headers=headers)
    again = await client.post(url, json={"state": "active"}, headers=headers)
    assert (first.status_code, again.status_code) == (200, 200), again.text
    assert again.json() == first.json() and first.json()["state"] == "active"
    assert await audit_actions(runtime, campaign["id"]) == [
        "referrals.campaign_created",
        "referrals.campaign_state_changed",
    ]
    # The same key for another move is refused; a move without a key is refused; neither moves it.
    r = await client.post(url, json={"state": "paused"}, headers=headers)
    assert r.status_code == 422
    r = await client.post(url, json={"state": "paused"}, headers={"Authorization": headers["Authorization"]})
    assert r.status_code == 422
    after = (await client.get(f"/v1/staff/campaigns/{campaign['id']}", headers=admin.auth)).json()
    assert after["state"] == "active"


async def test_illegal_transition_answers_409_naming_allowed_and_changes_nothing(
    client: httpx.AsyncClient, admin: Admin, program: dict, runtime: Runtime
):
    campaign = await create_campaign(client, admin, [program["id"]], activate=False)
    url = f"/v1/staff/campaigns/{campaign['id']}/state"
    r = await client.post(url, json={"state": "paused"}, headers=admin.auth)
    assert r.status_code == 409
    body = r.json()
    assert body["code"] == "illegal_transition"
    assert body["allowed"] == ["active", "ended"] and body["current_state"] == "draft"
    assert "active, ended" in body["detail"]
    after = (await client.get(f"/v1/staff/campaigns/{campaign['id']}", headers=admin.auth)).json()
    assert after["state"] == "draft" and after["updated_at"] == campaign["updated_at"]
    assert await audit_actions(runtime, campaign["id"]) == ["referrals.campaign_created"]

    assert (await client.post(url, json={"state": "ended"}, headers=admin.auth)).status_code == 200
    r = await client.post(url, json={"state": "active"}, headers=admin.auth)
    assert r.status_code == 409 and r.json()["allowed"] == []
    r = await client.patch(
        f"/v1/staff/campaigns/{campaign['id']}", json={"name": "Again"}, headers=admin.auth
    )
    assert r.status_code == 409
    r = await client.post(url, json={"state": "deleted"}, headers=admin.auth)
    assert r.status_code == 422


async def test_members_cannot_manage_campaigns(
    client: httpx.AsyncClient, admin: Admin, program: dict, runtime: Runtime
):
    member = await register_member(client)
    campaign = await create_campaign(client, admin, [program["id"]], activate=False)
    r = await client.post(
        f"/v1/staff/campaigns/{campaign['id']}/state", json={"state": "active"}, headers=member.auth
    )
    assert r.status_code == 403
    r = await client.post(
        "/v1/staff/campaigns",
        headers=member.auth,
        json={
            "name": "Mine",
            "program_ids": [program["id"]],
            "starts_at": datetime.now(UTC).isoformat(),
            "currency": "INR",
        },
    )
    assert r.status_code == 403
    assert (await client.get(f"/v1/staff/campaigns/{campaign['id']}", headers=admin.auth)).json()[
        "state"
    ] == "draft"
    assert await sql(runtime, "SELECT id FROM campaigns WHERE name = 'Mine'") == []


async def test_campaign_edit_is_audited_and_moves_programs(
    client: httpx.AsyncClient, admin: Admin, program: dict, runtime: Runtime
):
    uni = await create_university(client, admin)
    other = await create_program(client, admin, uni["id"])
    campaign = await create_campaign(client, admin, [program["id"]])
    r = await client.patch(
        f"/v1/staff/campaigns/{campaign['id']}",
        headers=admin.auth,
        json={"program_ids": [other["id"]], "priority": 9, "budget_total": None},
    )
    assert r.status_code == 200, r.text
    assert r.json()["program_ids"] == [other["id"]] and r.json()["priority"] == 9
    rows = await sql(
        runtime,
        "SELECT before, after FROM audit_log WHERE target_id = :t AND action = 'referrals.campaign_updated'",
        t=campaign["id"],
    )
    assert rows[0]["before"]["program_ids"] == [program["id"]] and rows[0]["after"]["program_ids"] == [
        other["id"]
    ]


async def test_choose_campaign_is_deterministic_and_respects_eligibility(
    client: httpx.AsyncClient, admin: Admin, program: dict, runtime: Runtime
):
    now = datetime.now(UTC)
    pid = uuid.UUID(program["id"])
    low = await create_campaign(client, admin, [program["id"]], priority=1)
    high_old = await create_campaign(
        client, admin, [program["id"]], priority=7, starts_at=(now - timedelta(days=10)).isoformat()
    )
    high_new = await create_campaign(
        client, admin, [program["id"]], priority=7, starts_at=(now - timedelta(days=2)).isoformat()
    )
    high_twin = await create_campaign(
        client, admin, [program["id"]], priority=7, starts_at=(now - timedelta(days=2)).isoformat()
    )
    gated = await create_campaign(
        client,
        admin,
        [program["id"]],
        priority=50,
        eligibility={"countries": ["NP"], "kyc_status": "verified"},
    )
    await create_campaign(
        client, admin, [program["id"]], priority=99, activate=False
    )  # a draft never applies
    future = await create_campaign(
        client, admin, [program["id"]], priority=99, starts_at=(now + timedelta(days=3)).isoformat()
    )

    async with runtime.db.sessionmaker() as session:
        member = facts()
        # Highest priority, then the latest start, then the newest id (high_twin was created last).
        chosen = await choose_campaign(session, pid, member, now)
        assert chosen is not None and str(chosen.id) == high_twin["id"]
        for _ in range(3):
            again = await choose_campaign(session, pid, member, now)
            assert again is not None and again.id == chosen.id
        eligible = await choose_campaign(session, pid, facts(country="NP", kyc_status="verified"), now)
        assert eligible is not None and str(eligible.id) == gated["id"]
        not_kyc = await choose_campaign(session, pid, facts(country="NP", kyc_status="pending"), now)
        assert not_kyc is not None and str(not_kyc.id) == high_twin["id"]
        later = await choose_campaign(session, pid, member, now + timedelta(days=4))
        assert later is not None and str(later.id) == future["id"]
        earlier = await choose_campaign(session, pid, member, now - timedelta(days=5))
        assert earlier is not None and str(earlier.id) == high_old["id"]

    r = await client.post(
        f"/v1/staff/campaigns/{high_twin['id']}/state", json={"state": "paused"}, headers=admin.auth
    )
    assert r.status_code == 200
    async with runtime.db.sessionmaker() as session:
        chosen = await choose_campaign(session, pid, facts(), now)
        assert chosen is not None and str(chosen.id) == high_new["id"]
        unverified = await choose_campaign(session, pid, facts(email_verified=False), now)
        assert unverified is not None and str(unverified.id) == high_new["id"]
    assert low["priority"] == 1


async def invite_campaign(client: httpx.AsyncClient, member: Member, program: dict) -> str | None:
    """The campaign recorded on a new invitation by `member` (what the member sees on it)."""
    r = await client.post(
        "/v1/referrals",
        json={"program_id": program["id"], "name": "Ravi Kumar", "email": new_email()},
        headers={**member.auth, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert r.status_code == 201, r.text
    campaign_id: str | None = r.json()["campaign_id"]
    return campaign_id


async def verify(client: httpx.AsyncClient, runtime: Runtime, member: Member, channel: str) -> None:
    r = await client.post(f"/v1/auth/verify/{channel}/request", headers=member.auth)
    assert r.status_code == 202, r.text
    to = member.phone if channel == "phone" else member.email
    assert to is not None
    code = await latest_code(runtime, to, sms=channel == "phone")
    r = await client.post(f"/v1/auth/verify/{channel}/confirm", headers=member.auth, json={"code": code})
    assert r.status_code == 200, r.text
    assert r.json()[f"{channel}_verified"] is True


async def test_email_verification_requirement_filters_campaigns(
    client: httpx.AsyncClient, admin: Admin, program: dict, runtime: Runtime
):
    only = await create_campaign(client, admin, [program["id"]], eligibility={"require_email_verified": True})
    async with runtime.db.sessionmaker() as session:
        pid = uuid.UUID(program["id"])
        assert await choose_campaign(session, pid, facts(email_verified=False), datetime.now(UTC)) is None
        chosen = await choose_campaign(session, pid, facts(email_verified=True), datetime.now(UTC))
        assert chosen is not None and str(chosen.id) == only["id"]
    # Through the API: an unverified referrer's invitation gets no campaign; once the email is
    # verified, the next one does (a verified phone does not count for it).
    member = await register_member(client, phone=new_phone())
    await verify(client, runtime, member, "phone")
    assert await invite_campaign(client, member, program) is None
    await verify(client, runtime, member, "email")
    assert await invite_campaign(client, member, program) == only["id"]


async def test_phone_verification_requirement_filters_campaigns(
    client: httpx.AsyncClient, admin: Admin, program: dict, runtime: Runtime
):
    only = await create_campaign(client, admin, [program["id"]], eligibility={"require_phone_verified": True})
    async with runtime.db.sessionmaker() as session:
        pid = uuid.UUID(program["id"])
        assert await choose_campaign(session, pid, facts(phone_verified=False), datetime.now(UTC)) is None
        chosen = await choose_campaign(session, pid, facts(phone_verified=True), datetime.now(UTC))
        assert chosen is not None and str(chosen.id) == only["id"]
    # Through the API: a verified email does not count; a verified phone does.
    member = await register_member(client, phone=new_phone())
    await verify(client, runtime, member, "email")
    assert await invite_campaign(client, member, program) is None
    await verify(client, runtime, member, "phone")
    assert await invite_campaign(client, member, program) == only["id"]


async def test_minimum_member_level_filters_campaigns(
    client: httpx.AsyncClient, admin: Admin, program: dict, runtime: Runtime
):
    fallback = await create_campaign(client, admin, [program["id"]], priority=1)
    leveled = await create_campaign(
        client, admin, [program["id"]], priority=5, eligibility={"min_member_level": 3}
    )
    assert leveled["eligibility"]["min_member_level"] == 3
    async with runtime.db.sessionmaker() as session:
        pid, now = uuid.UUID(program["id"]), datetime.now(UTC)
        for level, expected in ((1, fallback), (2, fallback), (3, leveled), (7, leveled)):
            chosen = await choose_campaign(session, pid, facts(level=level), now)
            assert chosen is not None and str(chosen.id) == expected["id"], level

    # Through the API: a new member (level 1) gets the fallback; once an admin sets their level to 3,
    # their next invitation gets the higher-priority campaign.
    member = await register_member(client)
    assert (await client.get("/v1/me", headers=member.auth)).json()["level"] == 1
    assert await invite_campaign(client, member, program) == fallback["id"]
    r = await client.put(f"/v1/staff/members/{member.id}/level", headers=admin.auth, json={"level": 3})
    assert r.status_code == 200, r.text
    assert await invite_campaign(client, member, program) == leveled["id"]

    # Staff can lift the requirement (audited like any edit); then level 1 qualifies.
    r = await client.patch(
        f"/v1/staff/campaigns/{leveled['id']}", json={"eligibility": {}}, headers=admin.auth
    )
    assert r.status_code == 200, r.text
    assert r.json()["eligibility"]["min_member_level"] is None
    [row] = await sql(
        runtime,
        "SELECT before, after FROM audit_log WHERE action = 'referrals.campaign_updated' AND target_id = :t",
        t=leveled["id"],
    )
    assert (row["before"]["min_member_level"], row["after"]["min_member_level"]) == (3, None)
    assert await invite_campaign(client, await register_member(client), program) == leveled["id"]


async def test_a_retried_create_answers_the_first_campaign(
    client: httpx.AsyncClient, admin: Admin, program: dict, runtime: Runtime
):
    body = {
        "name": f"Retry {uuid.uuid4().hex[:8]}",
        "program_ids": [program["id"]],
        "starts_at": datetime.now(UTC).isoformat(),
        "currency": "INR",
    }
    headers = {**admin.auth, "Idempotency-Key": str(uuid.uuid4())}
    first = await client.post("/v1/staff/campaigns", json=body, headers=headers)
    again = await client.post("/v1/staff/campaigns", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"] and again.headers.get("idempotent-replayed") == "true"
    assert len(await sql(runtime, "SELECT id FROM campaigns WHERE name = :n", n=body["name"])) == 1
    other = await client.post("/v1/staff/campaigns", json={**body, "priority": 3}, headers=headers)
    assert other.status_code == 422
    missing = await client.post(
        "/v1/staff/campaigns", json=body, headers={"Authorization": headers["Authorization"]}
    )
    assert missing.status_code == 422
