"""Grants in bulk: a campaign without a total budget keeps no budget row (and a void refunds
nothing), the staff view still says what was spent, a total set later counts what was paid before,
and a bulk transaction that fails falls back to one grant per transaction."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from referloop.referrals.rewards.service import budget, bulk
from referloop.runtime import Runtime
from tests.referrals.helpers import Admin, sql
from tests.referrals.lifecycle.helpers import (
    enrolled,
    make_catalogue,
    make_members,
    report,
    rewards,
    run_jobs,
)


async def test_no_total_budget_keeps_no_budget_row(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
) -> None:
    cat = await make_catalogue(client, admin)
    referrers = await make_members(runtime, 3)
    made = [await enrolled(runtime, cat, m) for m in referrers]
    await run_jobs(runtime)
    for referral, _ in made:
        assert [r["status"] for r in await rewards(runtime, referral)] == ["pending"]
    assert (
        await sql(runtime, "SELECT * FROM campaign_budgets WHERE campaign_id = :c", c=cat.campaign_id) == []
    )
    r = await client.get(f"/v1/staff/campaigns/{cat.campaign_id}/budget", headers=admin.auth)
    assert r.status_code == 200, r.text
    assert r.json()["spent"]["amount"] == 300_000 and r.json()["rewards"] == 3

    # A cancelled enrolment voids its reward; with no row there is nothing to refund.
    await report(runtime, cat.university_id, "enrolment_cancelled", email=made[0][1])
    await run_jobs(runtime)
    assert (await rewards(runtime, made[0][0]))[0]["status"] == "voided"
    assert (
        await sql(runtime, "SELECT * FROM campaign_budgets WHERE campaign_id = :c", c=cat.campaign_id) == []
    )
    r = await client.get(f"/v1/staff/campaigns/{cat.campaign_id}/budget", headers=admin.auth)
    assert r.json()["spent"]["amount"] == 200_000 and r.json()["rewards"] == 2

    # A total set later counts what was paid before it: room for one more reward of 100,000.
    r = await client.patch(
        f"/v1/staff/campaigns/{cat.campaign_id}",
        json={"budget_total": {"amount": 300_000, "currency": "INR"}},
        headers=admin.auth,
    )
    assert r.status_code == 200, r.text
    later = [await enrolled(runtime, cat, m) for m in referrers[:2]]
    await run_jobs(runtime)
    statuses = sorted([(await rewards(runtime, referral))[0]["status"] for referral, _ in later])
    assert statuses == ["pending", "skipped"]
    [row] = await sql(runtime, "SELECT spent FROM campaign_budgets WHERE campaign_id = :c", c=cat.campaign_id)
    assert row["spent"] == 300_000

    # A reward granted before the total, voided after it, gives its amount back to the budget.
    await report(runtime, cat.university_id, "enrolment_cancelled", email=made[1][1])
    await run_jobs(runtime)
    assert (await rewards(runtime, made[1][0]))[0]["status"] == "voided"
    [row] = await sql(runtime, "SELECT spent FROM campaign_budgets WHERE campaign_id = :c", c=cat.campaign_id)
    assert row["spent"] == 200_000
    r = await client.get(f"/v1/staff/campaigns/{cat.campaign_id}/budget", headers=admin.auth)
    assert r.json()["spent"]["amount"] == 200_000


async def test_a_total_switched_off_and_on_again_counts_what_was_paid_meanwhile(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
) -> None:
    cat = await make_catalogue(client, admin, budget_total={"amount": 300_000, "currency": "INR"})
    referrers = await make_members(runtime, 4)

    async def set_total(total: dict[str, Any] | None) -> None:
        r = await client.patch(
            f"/v1/staff/campaigns/{cat.campaign_id}", json={"budget_total": total}, headers=admin.auth
        )
        assert r.status_code == 200, r.text

    first, _ = await enrolled(runtime, cat, referrers[0])
    await run_jobs(runtime)
    await set_total(None)  # no total: the next grants charge no budget row
    meanwhile = [await enrolled(runtime, cat, m) for m in referrers[1:3]]
    await run_jobs(runtime)
    for referral in [first] + [r for r, _ in meanwhile]:
        assert [r["status"] for r in await rewards(runtime, referral)] == ["pending"]

    # 300,000 paid out of a total of 300,000: the row kept from the first total (100,000) must not
    # let a fourth reward through.
    await set_total({"amount": 300_000, "currency": "INR"})
    [row] = await sql(runtime, "SELECT spent FROM campaign_budgets WHERE campaign_id = :c", c=cat.campaign_id)
    assert row["spent"] == 300_000
    last, _ = await enrolled(runtime, cat, referrers[3])
    await run_jobs(runtime)
    assert [r["status"] for r in await rewards(runtime, last)] == ["skipped"]
    [row] = await sql(runtime, "SELECT spent FROM campaign_budgets WHERE campaign_id = :c", c=cat.campaign_id)
    assert row["spent"] == 300_000


async def test_a_failed_bulk_transaction_grants_one_by_one(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    cat = await make_catalogue(client, admin, budget_total={"amount": 250_000, "currency": "INR"})
    referrers = await make_members(runtime, 3)
    made = [await enrolled(runtime, cat, m) for m in referrers]
    real = bulk.grant_many

    async def racing(*args: Any, **kw: Any) -> Any:
        await real(*args, **kw)  # writes, then loses the budget race: all of it rolls back
        raise bulk.BudgetRace("test")

    monkeypatch.setattr(bulk, "grant_many", racing)
    await run_jobs(runtime)
    statuses = sorted([(await rewards(runtime, referral))[0]["status"] for referral, _ in made])
    assert statuses == ["pending", "pending", "skipped"]
    [row] = await sql(runtime, "SELECT spent FROM campaign_budgets WHERE campaign_id = :c", c=cat.campaign_id)
    assert row["spent"] == 200_000


async def test_a_total_set_while_grants_are_in_flight_waits_for_them_and_counts_them(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
) -> None:
    cat = await make_catalogue(client, admin)  # no total yet
    referrers = await make_members(runtime, 3)
    made = [await enrolled(runtime, cat, m) for m in referrers[:2]]
    async with runtime.db.sessionmaker() as session, session.begin():
        # Two grants made against "no total", not committed yet ...
        assert await bulk.grant_many(session, 10, [r for r, _ in made]) == ["pending", "pending"]
        # ... while an admin sets a total with room for exactly one more reward.
        setting = asyncio.create_task(
            client.patch(
                f"/v1/staff/campaigns/{cat.campaign_id}",
                json={"budget_total": {"amount": 300_000, "currency": "INR"}},
                headers=admin.auth,
            )
        )
        await asyncio.sleep(0.5)
        assert not setting.done()  # it waits for the grants to commit
    r = await setting
    assert r.status_code == 200, r.text
    [row] = await sql(runtime, "SELECT spent FROM campaign_budgets WHERE campaign_id = :c", c=cat.campaign_id)
    assert row["spent"] == 200_000  # the resync counted the grants that were in flight
    later = [await enrolled(runtime, cat, m) for m in referrers]
    await run_jobs(runtime)
    statuses = sorted([(await rewards(runtime, referral))[0]["status"] for referral, _ in later])
    assert statuses == ["pending", "skipped", "skipped"]


async def test_a_grant_started_while_a_total_changes_waits_and_reads_the_new_total(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
) -> None:
    cat = await make_catalogue(client, admin, budget_total={"amount": 1_000_000, "currency": "INR"})
    referrers = await make_members(runtime, 2)
    made = [await enrolled(runtime, cat, m) for m in referrers]
    async with runtime.db.sessionmaker() as admin_tx, admin_tx.begin():
        # The total lowered to one reward's worth, not committed yet ...
        await budget.lock_total(admin_tx, cat.campaign_id)
        await admin_tx.execute(
            text("UPDATE campaigns SET budget_total_amount = 100000 WHERE id = :c"), {"c": cat.campaign_id}
        )

        async def grant() -> list[str]:
            async with runtime.db.sessionmaker() as session, session.begin():
                return await bulk.grant_many(session, 10, [r for r, _ in made])

        granting = asyncio.create_task(grant())
        await asyncio.sleep(0.5)
        assert not granting.done()  # ... the grant waits for it ...
    # ... and then charges against the new total, not the one it could have read before.
    assert sorted(await granting) == ["budget_exhausted", "pending"]
