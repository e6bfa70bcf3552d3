"""Staff: search referrals, fraud holds (audited, nothing granted or released while held, lifting
returns to the state underneath), reward rules (audited). The state machine refuses illegal moves
with 409 naming the allowed ones and writes nothing; invitations expire through the worker."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from referloop.identity.models import Role
from referloop.referrals.lifecycle.errors import IllegalReferralTransition
from referloop.referrals.lifecycle.models import ReferralState
from referloop.referrals.lifecycle.service import states
from referloop.referrals.lifecycle.service.expiry import expire_due
from referloop.runtime import Runtime
from tests.factories import create_staff, register_member
from tests.referrals.helpers import Admin, audit_actions, sql
from tests.referrals.lifecycle.helpers import (
    balance,
    fixed,
    invite,
    lead_email,
    make_catalogue,
    make_members,
    report,
    rewards,
    run_jobs,
    state_of,
)


def keyed(staff: Any) -> dict[str, str]:
    return {**staff.auth, "Idempotency-Key": str(uuid.uuid4())}


async def counts(rt: Runtime, referral_id: uuid.UUID) -> dict[str, int]:
    [row] = await sql(
        rt,
        "SELECT (SELECT count(*) FROM referral_events WHERE referral_id = :r) AS history,"
        " (SELECT count(*) FROM audit_log WHERE target_id = CAST(:r AS text)) AS audit,"
        " (SELECT count(*) FROM outbox_events WHERE payload->>'referral_id' = CAST(:r AS text)) AS events,"
        " (SELECT count(*) FROM ledger_entries WHERE reference_id IN"
        "   (SELECT CAST(id AS text) FROM rewards WHERE referral_id = :r)) AS entries",
        r=referral_id,
    )
    return {k: int(v) for k, v in row.items()}


class TestFraudHold:
    async def test_hold_and_lift_are_audited_and_freeze_rewards(
        self, client: httpx.AsyncClient, runtime: Runtime, admin: Admin
    ) -> None:
        cat = await make_catalogue(client, admin, rules=[fixed("enrolled", "referrer", 100_000, hold_days=0)])
        support = await create_staff(client, runtime, role=Role.support)
        (referrer,) = await make_members(runtime)
        email = lead_email()
        referral = await invite(runtime, referrer, cat.program_id, email=email)
        await report(runtime, cat.university_id, "application_submitted", email=email)

        hold = {"reason": "same device as referrer"}
        headers = keyed(support)
        r = await client.post(f"/v1/staff/referrals/{referral}/fraud-hold", json=hold, headers=headers)
        assert r.status_code == 200, r.text
        assert (r.json()["state"], r.json()["held_from_state"]) == ("fraud_hold", "applied")
        assert r.json()["allowed_transitions"] == ["lift_hold"]
        # A retry with the same key answers the first result; a new request is refused.
        again = await client.post(f"/v1/staff/referrals/{referral}/fraud-hold", json=hold, headers=headers)
        assert again.status_code == 200 and again.json() == r.json()
        fresh = await client.post(
            f"/v1/staff/referrals/{referral}/fraud-hold", json=hold, headers=keyed(support)
        )
        assert fresh.status_code == 409 and fresh.json()["allowed"] == ["lift_hold"]

        # The partner still reports; the state underneath moves, but nothing is granted.
        assert (await report(runtime, cat.university_id, "enrolled", email=email)).state == "fraud_hold"
        await run_jobs(runtime)
        assert [w["status"] for w in await rewards(runtime, referral)] == ["queued"]
        assert (await balance(runtime, referrer)).pending == 0

        r = await client.post(
            f"/v1/staff/referrals/{referral}/fraud-hold/lift",
            json={"reason": "checked: different person"},
            headers=keyed(support),
        )
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "enrolled" and r.json()["held_from_state"] is None
        await run_jobs(runtime)
        assert (await balance(runtime, referrer)).available == 100_000  # hold of 0 days: released at once
        assert await state_of(runtime, referral) == "rewarded"

        actions = await audit_actions(runtime, str(referral))
        assert "referrals.fraud_hold_placed" in actions and "referrals.fraud_hold_lifted" in actions
        [placed] = await sql(
            runtime,
            "SELECT actor_id, actor_type, after FROM audit_log WHERE target_id = :t AND action = 'referrals.fraud_hold_placed'",
            t=str(referral),
        )
        assert (str(placed["actor_id"]), placed["actor_type"]) == (support.id, "staff")
        assert placed["after"]["reason"] == "same device as referrer"

        # Staff see the reason in the timeline (members see the move without it).
        detail = await client.get(f"/v1/staff/referrals/{referral}", headers=support.auth)
        assert any(t["reason"] == "same device as referrer" for t in detail.json()["timeline"])

    async def test_illegal_moves_answer_409_with_the_allowed_ones_and_write_nothing(
        self, client: httpx.AsyncClient, runtime: Runtime, admin: Admin
    ) -> None:
        cat = await make_catalogue(client, admin)
        support = await create_staff(client, runtime, role=Role.support)
        (referrer,) = await make_members(runtime)
        email = lead_email()
        referral = await invite(runtime, referrer, cat.program_id, email=email)
        await report(runtime, cat.university_id, "application_rejected", email=email)
        before = await counts(runtime, referral)

        r = await client.post(
            f"/v1/staff/referrals/{referral}/fraud-hold", json={"reason": "x"}, headers=keyed(support)
        )
        assert r.status_code == 409
        assert r.json()["code"] == "illegal_transition" and r.json()["allowed"] == []
        r = await client.post(
            f"/v1/staff/referrals/{referral}/fraud-hold/lift", json={"reason": "x"}, headers=keyed(support)
        )
        assert r.status_code == 409 and r.json()["current_state"] == "rejected"

        # Through the service: enrolled -> signed_up is not a move; the error names what is.
        email2 = lead_email()
        other = await invite(runtime, referrer, cat.program_id, email=email2)
        await report(runtime, cat.university_id, "enrolled", email=email2)
        before_other = await counts(runtime, other)
        async with runtime.db.sessionmaker() as session, session.begin():
            locked = await states.lock_referral(session, other)
            with pytest.raises(IllegalReferralTransition) as caught:
                await states.transition(
                    session, locked, ReferralState.signed_up, actor=states.SYSTEM, reason="t"
                )
        assert caught.value.extra["allowed"] == ["fraud_hold", "reversed", "rewarded"]
        assert await counts(runtime, referral) == before
        assert await counts(runtime, other) == before_other

    async def test_members_and_finance_cannot_use_staff_referral_routes(
        self, client: httpx.AsyncClient, runtime: Runtime, admin: Admin
    ) -> None:
        member = await register_member(client)
        finance = await create_staff(client, runtime, role=Role.finance)
        assert (await client.get("/v1/staff/referrals", headers=member.auth)).status_code == 403
        assert (await client.get("/v1/staff/referrals", headers=finance.auth)).status_code == 403

    async def test_search_by_member_program_and_state(
        self, client: httpx.AsyncClient, runtime: Runtime, admin: Admin
    ) -> None:
        cat, cat2 = await make_catalogue(client, admin), await make_catalogue(client, admin)
        a, b = await make_members(runtime, 2)
        ra = await invite(runtime, a, cat.program_id)
        rb = await invite(runtime, b, cat.program_id, email=(e := lead_email()))
        rc = await invite(runtime, b, cat2.program_id)
        await report(runtime, cat.university_id, "application_submitted", email=e)

        async def found(**params: Any) -> list[str]:
            r = await client.get("/v1/staff/referrals", params=params, headers=admin.auth)
            assert r.status_code == 200, r.text
            return [i["id"] for i in r.json()["items"]]

        assert await found(member_id=str(a)) == [str(ra)]
        assert await found(member_id=str(b)) == [str(rc), str(rb)]
        assert await found(program_id=str(cat.program_id)) == [str(rb), str(ra)]
        assert await found(program_id=str(cat.program_id), state="applied") == [str(rb)]
        assert await found(university_id=str(cat2.university_id)) == [str(rc)]


class TestPartnerScope:
    async def test_a_partner_only_ever_matches_its_own_universitys_referrals(
        self, client: httpx.AsyncClient, runtime: Runtime, admin: Admin
    ) -> None:
        cat_a, cat_b = await make_catalogue(client, admin), await make_catalogue(client, admin)
        (referrer,) = await make_members(runtime)
        email = lead_email()
        referral = await invite(runtime, referrer, cat_a.program_id, email=email)
        for match in ({"email": email}, {"referral_id": referral}):
            result = await report(runtime, cat_b.university_id, "enrolled", **match)
            assert (result.status, result.referral_id) == ("not_found", None)
        result = await report(
            runtime, cat_b.university_id, "enrolled", email=email, program_id=cat_a.program_id
        )
        assert result.status == "not_found"
        assert await state_of(runtime, referral) == "invited"
        assert (
            await sql(
                runtime, "SELECT 1 FROM partner_outcomes WHERE university_id = :u", u=cat_b.university_id
            )
            == []
        )

    async def test_a_repeated_report_answers_what_the_first_did(
        self, client: httpx.AsyncClient, runtime: Runtime, admin: Admin
    ) -> None:
        cat = await make_catalogue(client, admin)
        (referrer,) = await make_members(runtime)
        email = lead_email()
        referral = await invite(runtime, referrer, cat.program_id, email=email)
        first = await report(
            runtime, cat.university_id, "application_submitted", email=email, external_ref="app-1"
        )
        again = await report(
            runtime, cat.university_id, "application_submitted", email=email, external_ref="app-1"
        )
        assert (first.status, again.status) == ("applied", "duplicate")
        assert again.referral_id == referral and again.state == "applied"
        history = await sql(
            runtime,
            "SELECT to_state FROM referral_events WHERE referral_id = :r ORDER BY created_at, id",
            r=referral,
        )
        assert [h["to_state"] for h in history] == ["invited", "applied"]
        refused = await report(
            runtime, cat.university_id, "enrolled", email=email, fee_amount=-1, fee_currency="INR"
        )
        assert refused.status == "refused"


class TestExpiry:
    async def test_an_invitation_past_its_window_expires_through_the_worker(
        self, client: httpx.AsyncClient, runtime: Runtime, admin: Admin
    ) -> None:
        cat = await make_catalogue(client, admin, attribution_window_days=7)
        (referrer,) = await make_members(runtime)
        email = lead_email()
        referral = await invite(runtime, referrer, cat.program_id, email=email)
        [row] = await sql(runtime, "SELECT expires_at, invited_at FROM referrals WHERE id = :r", r=referral)
        assert row["expires_at"] - row["invited_at"] == timedelta(days=7)
        await expire_due(runtime, now=datetime.now(UTC) + timedelta(days=6))
        assert await state_of(runtime, referral) == "invited"
        while await expire_due(runtime, now=datetime.now(UTC) + timedelta(days=8)):
            pass
        assert await state_of(runtime, referral) == "expired"
        assert "referrals.referral_state_changed" in await audit_actions(runtime, str(referral))
        # An expired invitation does not block a new one, and is never matched by a partner.
        assert (await report(runtime, cat.university_id, "enrolled", email=email)).status == "not_found"
        assert await invite(runtime, referrer, cat.program_id, email=email)


class TestRules:
    async def test_rules_are_admin_only_validated_and_audited(
        self, client: httpx.AsyncClient, runtime: Runtime, admin: Admin
    ) -> None:
        cat = await make_catalogue(client, admin, rules=[])
        base = f"/v1/staff/campaigns/{cat.campaign_id}/reward-rules"
        support = await create_staff(client, runtime, role=Role.support)
        rule = fixed("enrolled", "referrer", 100_000)
        assert (
            await client.post(base, json=rule, headers={**support.auth, "Idempotency-Key": "k"})
        ).status_code == 403
        r = await client.post(base, json=rule, headers=admin.auth)
        assert r.status_code == 201, r.text
        rule_id = r.json()["id"]
        assert (await client.post(base, json=rule, headers=admin.auth)).status_code == 409
        usd = fixed("applied", "referrer", 100)
        usd["amount"]["currency"] = "USD"
        assert (await client.post(base, json=usd, headers=admin.auth)).status_code == 422
        tiers_on_referee = fixed(
            "enrolled",
            "referee",
            1,
            period="month",
            tiers=[{"from": 2, "amount": {"amount": 5, "currency": "INR"}}],
        )
        assert (await client.post(base, json=tiers_on_referee, headers=admin.auth)).status_code == 422

        update = {
            k: v for k, v in fixed("enrolled", "referrer", 150_000).items() if k not in ("milestone", "role")
        }
        r = await client.put(f"/v1/staff/reward-rules/{rule_id}", json=update, headers=admin.auth)
        assert r.status_code == 200 and r.json()["amount"]["amount"] == 150_000
        listed = (await client.get(base, headers=admin.auth)).json()["items"]
        assert [i["id"] for i in listed] == [rule_id]
        assert (
            await client.delete(f"/v1/staff/reward-rules/{rule_id}", headers=admin.auth)
        ).status_code == 204
        assert (await client.get(base, headers=admin.auth)).json()["items"] == []
        assert await audit_actions(runtime, rule_id) == [
            "rewards.rule_created",
            "rewards.rule_updated",
            "rewards.rule_withdrawn",
        ]
