"""Concurrency against the real database: the budget guard is SQL, so whatever runs at once, a
campaign never pays past its budget, and a milestone rewards once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from referloop import ledger
from referloop.referrals.rewards.service import grant
from referloop.runtime import Runtime
from tests.conftest import make_settings
from tests.factories import register_member
from tests.referrals.helpers import Admin, sql
from tests.referrals.lifecycle.helpers import (
    assert_ledger_sound,
    fixed,
    invite,
    lead_email,
    make_catalogue,
    make_members,
    report,
    rewards,
    run_jobs,
    share_click,
)

REPORTS = 200
COVERED = 50
AMOUNT = 100_000


@pytest.fixture
async def wide_runtime(database_url: str, redis_url: str, tmp_var: Path) -> AsyncIterator[Runtime]:
    """A runtime whose pool lets 30 transactions run at once, for this test only."""
    rt = Runtime.build(make_settings(database_url, redis_url, tmp_var, db_pool_size=30, db_max_overflow=0))
    yield rt
    await rt.close()


async def test_200_concurrent_enrolments_against_a_budget_for_50(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin, wide_runtime: Runtime
) -> None:
    cat = await make_catalogue(client, admin, budget_total={"amount": COVERED * AMOUNT, "currency": "INR"})
    referrers = await make_members(runtime, 20)
    emails = [lead_email() for _ in range(REPORTS)]
    referral_ids = [
        await invite(runtime, referrers[i % len(referrers)], cat.program_id, email=e)
        for i, e in enumerate(emails)
    ]

    # 200 partner reports at once, each in its own transaction (plus 50 repeats of the same items).
    refs = [f"enr-{uuid.uuid4().hex}" for _ in emails]
    jobs = [
        report(wide_runtime, cat.university_id, "enrolled", email=e, external_ref=r)
        for e, r in zip(emails, refs, strict=True)
    ]
    jobs += [
        report(wide_runtime, cat.university_id, "enrolled", email=emails[i], external_ref=refs[i])
        for i in range(50)
    ]
    results = await asyncio.gather(*jobs)
    assert sorted({r.status for r in results}) == ["applied", "duplicate"]
    assert sum(r.status == "applied" for r in results) == REPORTS

    # Every queued reward granted at once (each on its own connection), twice over.
    queued = await sql(
        runtime, "SELECT id FROM rewards WHERE campaign_id = :c AND status = 'queued'", c=cat.campaign_id
    )
    assert len(queued) == REPORTS

    async def grant_one(reward_id: uuid.UUID) -> str | None:
        async with wide_runtime.db.sessionmaker() as session, session.begin():
            return await grant.grant(session, reward_id)

    outcomes = await asyncio.gather(*(grant_one(q["id"]) for q in queued * 2))
    assert outcomes.count("pending") == COVERED
    assert outcomes.count("budget_exhausted") == REPORTS - COVERED
    await run_jobs(runtime)  # nothing left to do

    rows = await sql(
        runtime,
        "SELECT status, reason, count(*) AS n, sum(amount) AS total FROM rewards WHERE campaign_id = :c"
        " GROUP BY status, reason",
        c=cat.campaign_id,
    )
    assert {(r["status"], r["reason"], r["n"]) for r in rows} == {
        ("pending", None, COVERED),
        ("skipped", "budget_exhausted", REPORTS - COVERED),
    }
    [budget] = await sql(
        runtime, "SELECT spent, rewards FROM campaign_budgets WHERE campaign_id = :c", c=cat.campaign_id
    )
    assert (budget["spent"], budget["rewards"]) == (COVERED * AMOUNT, COVERED)
    async with runtime.db.sessionmaker() as session:
        pending = 0
        for m in referrers:
            pending += (await ledger.balance_of(session, m, "INR")).pending
        expense = await ledger.platform_balance(
            session, ledger.AccountCode.reward_expense, "INR", str(cat.program_id)
        )
    assert pending == COVERED * AMOUNT
    assert expense == -COVERED * AMOUNT
    # One ledger entry per rewarded milestone, whatever was retried.
    entries = await sql(
        runtime,
        "SELECT count(*) AS n FROM ledger_entries WHERE reference_type = 'referral_reward'"
        " AND reference_id IN (SELECT id::text FROM rewards WHERE campaign_id = :c)",
        c=cat.campaign_id,
    )
    assert entries[0]["n"] == COVERED
    for referral_id in referral_ids[:5]:
        assert len(await rewards(runtime, referral_id)) == 1
    await assert_ledger_sound(runtime)


async def test_two_reports_at_once_for_one_click_make_one_referral(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin, wide_runtime: Runtime
) -> None:
    cat = await make_catalogue(
        client, admin, rules=[fixed("applied", "referrer", 5_000), fixed("enrolled", "referrer", 100_000)]
    )
    referrer = await register_member(client)
    clicks = [await share_click(client, referrer, cat.program_id) for _ in range(4)]

    # Per click, the application and the enrolment at once, each its own partner item and transaction.
    results = await asyncio.gather(
        *(
            report(wide_runtime, cat.university_id, kind, click_id=click, external_ref=f"{kind}-{click}")
            for click in clicks
            for kind in ("application_submitted", "enrolled")
        )
    )
    assert all(r.status in ("applied", "stale") for r in results), results
    for click in clicks:
        [made] = await sql(runtime, "SELECT id, state FROM referrals WHERE click_id = :c", c=uuid.UUID(click))
        assert made["state"] == "enrolled"
        assert [(w["milestone"], w["role"]) for w in await rewards(runtime, made["id"])] == [
            ("applied", "referrer"),
            ("enrolled", "referrer"),
        ]
