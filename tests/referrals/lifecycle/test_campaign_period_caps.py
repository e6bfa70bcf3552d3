"""Caps of the `campaign` period (the per-referrer amount, a rule's count, tiers) count the campaign's
whole life whatever its `starts_at` says: their counters start at one fixed instant, so a grant
after an edit of the start still sees what was paid before it, and a void after it gives back to
the same counter. A started campaign's start cannot be edited any more (409); the counters hold
anyway, for campaigns edited before that rule (migration 0019 moved their rows, tested here)."""

from __future__ import annotations

import importlib.util
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import text

from referloop.referrals.rewards.service import budget, grant
from referloop.runtime import Runtime
from tests.referrals.helpers import Admin, create_campaign, create_program, create_university, sql
from tests.referrals.lifecycle.helpers import (
    enrolled,
    fixed,
    make_catalogue,
    make_members,
    report,
    rewards,
    run_jobs,
)

FIXED = budget.CAMPAIGN_PERIOD_START
CAP = {"amount": {"amount": 100_000, "currency": "INR"}, "period": "campaign"}


async def _grant(rt: Runtime, referral: uuid.UUID, path: str) -> None:
    """Grant the referral's queued rewards in bulk (as the worker does) or one by one."""
    if path == "bulk":
        await run_jobs(rt)
        return
    for r in await rewards(rt, referral):
        if r["status"] == "queued":
            async with rt.db.sessionmaker() as session, session.begin():
                await grant.grant(session, r["id"])


async def _move_start(rt: Runtime, campaign_id: uuid.UUID, by: timedelta) -> None:
    """An edit of `starts_at` made before the API refused it on a started campaign."""
    await sql(rt, "UPDATE campaigns SET starts_at = starts_at + :by WHERE id = :c", by=by, c=campaign_id)


async def _counters(rt: Runtime, campaign_id: uuid.UUID) -> dict[tuple[str, datetime], int]:
    rows = await sql(
        rt, "SELECT counter, period_start, value FROM reward_counters WHERE campaign_id = :c", c=campaign_id
    )
    return {(r["counter"], r["period_start"]): r["value"] for r in rows}


def _status(rows: list[dict[str, Any]]) -> tuple[str, str | None]:
    [row] = rows
    return row["status"], row["reason"]


@pytest.mark.parametrize("path", ["bulk", "single"])
async def test_the_referrer_cap_survives_an_edit_of_the_start_and_a_void_gives_back_to_it(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin, path: str
) -> None:
    cat = await make_catalogue(client, admin, per_referrer_cap=CAP)  # 100,000 at enrolment
    (referrer,) = await make_members(runtime)
    a, a_email = await enrolled(runtime, cat, referrer)
    await _grant(runtime, a, path)
    assert _status(await rewards(runtime, a)) == ("pending", None)

    await _move_start(runtime, cat.campaign_id, -timedelta(hours=1))
    b, _ = await enrolled(runtime, cat, referrer)
    await _grant(runtime, b, path)
    assert _status(await rewards(runtime, b)) == ("skipped", "referrer_cap_reached")
    assert await _counters(runtime, cat.campaign_id) == {("spend:campaign", FIXED): 100_000}

    # A void after the edit gives back to that same row: the cap is free again.
    await report(runtime, cat.university_id, "enrolment_cancelled", email=a_email)
    await run_jobs(runtime)
    assert _status(await rewards(runtime, a)) == ("voided", None)
    assert await _counters(runtime, cat.campaign_id) == {("spend:campaign", FIXED): 0}
    c, _ = await enrolled(runtime, cat, referrer)
    await _grant(runtime, c, path)
    assert _status(await rewards(runtime, c)) == ("pending", None)
    assert await _counters(runtime, cat.campaign_id) == {("spend:campaign", FIXED): 100_000}


@pytest.mark.parametrize("path", ["bulk", "single"])
async def test_tiers_and_the_rule_count_of_the_campaign_period_survive_edits_of_the_start(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin, path: str
) -> None:
    tiers = [
        {"from": 1, "amount": {"amount": 100_000, "currency": "INR"}},
        {"from": 2, "amount": {"amount": 150_000, "currency": "INR"}},
    ]
    rule = fixed("enrolled", "referrer", 100_000, period="campaign", max_per_referrer=2, tiers=tiers)
    cat = await make_catalogue(client, admin, rules=[rule])
    (referrer,) = await make_members(runtime)
    got = []
    for _ in range(3):
        referral, _ = await enrolled(runtime, cat, referrer)
        await _grant(runtime, referral, path)
        [row] = await rewards(runtime, referral)
        got.append((row["status"], row["amount"], row["reason"]))
        await _move_start(runtime, cat.campaign_id, -timedelta(minutes=17))
    assert got == [
        ("pending", 100_000, None),
        ("pending", 150_000, None),  # the referrer's 2nd enrolment of the campaign
        ("skipped", 150_000, "rule_cap_reached"),
    ]
    counters = await _counters(runtime, cat.campaign_id)
    assert {k[1] for k in counters} == {FIXED}
    assert sorted(v for k, v in counters.items()) == [2, 3]  # rule:<id> 2, enrolments:campaign 3


async def test_a_started_campaign_keeps_its_start(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
) -> None:
    university = await create_university(client, admin)
    program = await create_program(client, admin, university["id"])
    now = datetime.now(UTC)
    started = await create_campaign(client, admin, [program["id"]])
    url = f"/v1/staff/campaigns/{started['id']}"
    moved = (now - timedelta(hours=3)).isoformat()
    r = await client.patch(url, json={"starts_at": moved}, headers=admin.auth)
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "conflict"
    # The same start again (a client sending the whole form) and other fields are fine.
    r = await client.patch(url, json={"starts_at": started["starts_at"], "priority": 4}, headers=admin.auth)
    assert r.status_code == 200, r.text
    assert r.json()["starts_at"] == started["starts_at"]
    r = await client.post(f"{url}/state", json={"state": "paused"}, headers=admin.auth)
    assert r.status_code == 200, r.text
    assert (await client.patch(url, json={"starts_at": moved}, headers=admin.auth)).status_code == 409

    # A draft, or a campaign whose start is still ahead, may move.
    draft = await create_campaign(client, admin, [program["id"]], activate=False)
    r = await client.patch(
        f"/v1/staff/campaigns/{draft['id']}", json={"starts_at": moved}, headers=admin.auth
    )
    assert r.status_code == 200, r.text
    ahead = await create_campaign(
        client, admin, [program["id"]], starts_at=(now + timedelta(days=2)).isoformat()
    )
    later = (now + timedelta(days=5)).isoformat()
    r = await client.patch(
        f"/v1/staff/campaigns/{ahead['id']}", json={"starts_at": later}, headers=admin.auth
    )
    assert r.status_code == 200, r.text


def _migration() -> ModuleType:
    path = (
        Path(__file__).resolve().parents[3]
        / "migrations/versions/2026-12-03-1600_campaign_period_counters.py"
    )
    spec = importlib.util.spec_from_file_location("campaign_period_counters", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_migration_moves_counters_kept_at_old_starts_and_the_charges_naming_them(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
) -> None:
    rule = fixed("enrolled", "referrer", 100_000, period="campaign", max_per_referrer=5)
    cap = {"amount": {"amount": 250_000, "currency": "INR"}, "period": "campaign"}
    cat = await make_catalogue(client, admin, rules=[rule], per_referrer_cap=cap)
    (referrer,) = await make_members(runtime)
    a, a_email = await enrolled(runtime, cat, referrer)
    b, _ = await enrolled(runtime, cat, referrer)
    await run_jobs(runtime)
    [rule_id] = [r["rule_id"] for r in await rewards(runtime, a)]
    rule_counter = f"rule:{rule_id}"

    # The rows as the older code kept them: A charged at the first start, B after an edit of it
    # (not at a UTC midnight); and a calendar row and a row of a rule now of another period, to stay.
    [c] = await sql(runtime, "SELECT starts_at FROM campaigns WHERE id = :c", c=cat.campaign_id)
    second = c["starts_at"]
    first = second - timedelta(hours=5, minutes=3)
    month = datetime(2026, 11, 1, tzinfo=UTC)
    await sql(runtime, "DELETE FROM reward_counters WHERE campaign_id = :c", c=cat.campaign_id)
    old_rows = [
        ("spend:campaign", first, 100_000),
        ("spend:campaign", second, 100_000),
        (rule_counter, first, 1),
        (rule_counter, second, 1),
        ("spend:month", month, 7),
        (f"rule:{uuid.uuid4()}", first, 3),
    ]
    for counter, start, value in old_rows:
        await sql(
            runtime,
            "INSERT INTO reward_counters (campaign_id, member_id, counter, period_start, value)"
            " VALUES (:c, :m, :n, :s, :v)",
            c=cat.campaign_id,
            m=referrer,
            n=counter,
            s=start,
            v=value,
        )
    for referral, start in ((a, first), (b, second)):
        charges = [
            {"counter": n, "period_start": start.isoformat(), "delta": d}
            for n, d in ((rule_counter, 1), ("spend:campaign", 100_000))
        ] + [budget.UNCHARGED_MARK]
        await sql(
            runtime,
            "UPDATE rewards SET charged_counters = CAST(:j AS jsonb) WHERE referral_id = :r",
            j=json.dumps(charges),
            r=referral,
        )

    migration = _migration()

    async with runtime.db.engine.connect() as conn:
        await conn.run_sync(lambda sync: _in_context(sync, migration.upgrade))
        await conn.commit()
    stays = {("spend:month", month): 7, (old_rows[-1][0], first): 3}
    assert await _counters(runtime, cat.campaign_id) == {
        ("spend:campaign", FIXED): 200_000,
        (rule_counter, FIXED): 2,
        **stays,
    }
    for referral in (a, b):
        [row] = await rewards(runtime, referral)
        assert row["charged_counters"] == [
            {"counter": rule_counter, "period_start": FIXED.isoformat(), "delta": 1},
            {"counter": "spend:campaign", "period_start": FIXED.isoformat(), "delta": 100_000},
            budget.UNCHARGED_MARK,
        ]

    # The grants and voids of the new code meet the merged rows.
    c3, _ = await enrolled(runtime, cat, referrer)
    await run_jobs(runtime)
    assert _status(await rewards(runtime, c3)) == ("skipped", "referrer_cap_reached")
    await report(runtime, cat.university_id, "enrolment_cancelled", email=a_email)
    await run_jobs(runtime)
    assert _status(await rewards(runtime, a)) == ("voided", None)
    assert await _counters(runtime, cat.campaign_id) == {
        ("spend:campaign", FIXED): 100_000,
        (rule_counter, FIXED): 1,
        **stays,
    }

    # The downgrade puts the rows (and the charges) back at the current start, where the older code
    # looks. Rolled back: the other tests' counters stay where this code keeps them.
    async with runtime.db.engine.connect() as conn:
        await conn.run_sync(lambda sync: _in_context(sync, migration.downgrade))
        rows = await conn.execute(
            text("SELECT counter, period_start, value FROM reward_counters WHERE campaign_id = :c"),
            {"c": cat.campaign_id},
        )
        assert {(r.counter, r.period_start): r.value for r in rows} == {
            ("spend:campaign", second): 100_000,
            (rule_counter, second): 1,
            **stays,
        }
        charged = await conn.scalar(
            text("SELECT charged_counters FROM rewards WHERE referral_id = :r"), {"r": b}
        )
        assert {datetime.fromisoformat(e["period_start"]) for e in charged if e["period_start"]} == {second}
        await conn.rollback()


def _in_context(connection: Any, step: Any) -> None:
    with Operations.context(MigrationContext.configure(connection)):
        step()
