"""Reversed enrolments: inside the hold the pending reward is voided (and the budget given back);
after release it is clawed back: what is available is taken at once, the rest becomes a receivable
that the member's next released reward settles. The available balance never goes negative."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx

from referloop.runtime import Runtime
from tests.factories import credit_member
from tests.referrals.helpers import Admin, sql
from tests.referrals.lifecycle.helpers import (
    assert_ledger_sound,
    balance,
    enrolled,
    invite,
    lead_email,
    make_catalogue,
    make_members,
    owed,
    report,
    rewards,
    run_jobs,
    state_of,
)


async def spend(rt: Runtime, member: uuid.UUID, amount: int) -> None:
    """The member withdraws `amount` (a hold posted to payout clearing), through the ledger's API."""
    from referloop import ledger

    async with rt.db.sessionmaker() as session, session.begin():
        held = await ledger.hold(
            session,
            member_id=member,
            amount=amount,
            currency="INR",
            idempotency_key=f"test-spend:{uuid.uuid4()}",
        )
        await ledger.post_pending(
            session, held.transfer.id, destination=ledger.platform_account(ledger.AccountCode.payout_clearing)
        )


class TestReversalInsideTheHold:
    async def test_the_pending_reward_is_voided_and_the_budget_given_back(
        self, client: httpx.AsyncClient, runtime: Runtime, admin: Admin
    ) -> None:
        cat = await make_catalogue(client, admin, budget_total={"amount": 100_000, "currency": "INR"})
        (referrer,) = await make_members(runtime)
        referral, email = await enrolled(runtime, cat, referrer)
        await run_jobs(runtime)
        assert (await balance(runtime, referrer)).pending == 100_000

        result = await report(runtime, cat.university_id, "enrolment_cancelled", email=email)
        assert (result.status, result.state) == ("applied", "reversed")
        await run_jobs(runtime, now=datetime.now(UTC) + timedelta(days=40))  # past the hold: no release
        [reward] = await rewards(runtime, referral)
        assert reward["status"] == "voided"
        b = await balance(runtime, referrer)
        assert (b.pending, b.available) == (0, 0)
        [budget] = await sql(
            runtime, "SELECT spent FROM campaign_budgets WHERE campaign_id = :c", c=cat.campaign_id
        )
        assert budget["spent"] == 0

        # The budget is free again: another enrolment is paid.
        other, _ = await enrolled(runtime, cat, referrer)
        await run_jobs(runtime)
        assert (await rewards(runtime, other))[0]["status"] == "pending"
        await assert_ledger_sound(runtime)

    async def test_a_cancellation_arriving_before_its_enrolment_means_no_reward(
        self, client: httpx.AsyncClient, runtime: Runtime, admin: Admin
    ) -> None:
        cat = await make_catalogue(client, admin)
        (referrer,) = await make_members(runtime)
        email = lead_email()
        referral = await invite(runtime, referrer, cat.program_id, email=email)
        now = datetime.now(UTC)
        cancelled = await report(
            runtime, cat.university_id, "enrolment_cancelled", email=email, occurred_at=now
        )
        assert cancelled.state == "reversed"
        enrolled = await report(
            runtime, cat.university_id, "enrolled", email=email, occurred_at=now - timedelta(days=1)
        )
        assert (enrolled.status, enrolled.state) == ("stale", "reversed")
        await run_jobs(runtime)
        assert await rewards(runtime, referral) == []
        assert (await balance(runtime, referrer)).pending == 0


class TestClawbackAfterRelease:
    async def test_available_is_taken_the_rest_is_owed_and_the_next_reward_settles_it(
        self, client: httpx.AsyncClient, runtime: Runtime, admin: Admin
    ) -> None:
        cat = await make_catalogue(client, admin)
        (referrer,) = await make_members(runtime)
        referral, email = await enrolled(runtime, cat, referrer)
        later = datetime.now(UTC) + timedelta(days=31)
        await run_jobs(runtime, now=later)
        assert (await balance(runtime, referrer)).available == 100_000
        assert await state_of(runtime, referral) == "rewarded"

        await spend(runtime, referrer, 70_000)  # the member withdrew most of it
        assert (await balance(runtime, referrer)).available == 30_000

        await report(runtime, cat.university_id, "enrolment_cancelled", email=email)
        await run_jobs(runtime, now=later)
        [reward] = await rewards(runtime, referral)
        assert reward["status"] == "clawed_back"
        assert (reward["clawed_back_amount"], reward["receivable_amount"]) == (30_000, 70_000)
        b = await balance(runtime, referrer)
        assert (b.pending, b.available) == (0, 0)  # never below zero
        assert await owed(runtime, referrer) == 70_000
        await assert_ledger_sound(runtime)

        # The next reward, once released, pays the debt first.
        await credit_member(runtime, referrer, 5_000)  # unrelated money arrives meanwhile
        await enrolled(runtime, cat, referrer)
        await run_jobs(runtime, now=later + timedelta(days=31))
        assert await owed(runtime, referrer) == 0
        assert (await balance(runtime, referrer)).available == 100_000 + 5_000 - 70_000
        await assert_ledger_sound(runtime)

    async def test_a_debt_larger_than_the_next_reward_stays_partly_owed(
        self, client: httpx.AsyncClient, runtime: Runtime, admin: Admin
    ) -> None:
        cat = await make_catalogue(client, admin)
        (referrer,) = await make_members(runtime)
        first, e1 = await enrolled(runtime, cat, referrer)
        second, e2 = await enrolled(runtime, cat, referrer)
        later = datetime.now(UTC) + timedelta(days=31)
        await run_jobs(runtime, now=later)
        await spend(runtime, referrer, 200_000)
        await report(runtime, cat.university_id, "enrolment_cancelled", email=e1)
        await report(runtime, cat.university_id, "enrolment_cancelled", email=e2)
        await run_jobs(runtime, now=later)
        assert await owed(runtime, referrer) == 200_000
        await enrolled(runtime, cat, referrer)
        await run_jobs(runtime, now=later + timedelta(days=31))
        assert await owed(runtime, referrer) == 100_000
        assert (await balance(runtime, referrer)).available == 0
        r = await sql(runtime, "SELECT status FROM rewards WHERE referral_id IN (:a, :b)", a=first, b=second)
        assert {x["status"] for x in r} == {"clawed_back"}
        await assert_ledger_sound(runtime)
