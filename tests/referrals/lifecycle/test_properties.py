"""Property: any sequence of partner reports (duplicated, reordered, some at once) interleaved with
the worker's jobs pays each milestone of a referral at most once, never pays a cancelled enrolment,
keeps the member's balances equal to their rewards, and leaves a ledger that reconciles."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from referloop.runtime import Runtime
from tests.conftest import random_ip
from tests.referrals.helpers import make_admin, sql
from tests.referrals.lifecycle.helpers import (
    Catalogue,
    assert_ledger_sound,
    balance,
    fixed,
    invite,
    lead_email,
    make_catalogue,
    make_members,
    owed,
    report,
    run_jobs,
)

KINDS = [
    "application_submitted",
    "application_accepted",
    "application_rejected",
    "enrolled",
    "enrolment_cancelled",
]
# Reports mostly move forward; rejections and cancellations are rarer, as in life.
kind = st.sampled_from(KINDS[:2] + ["enrolled"] * 3 + KINDS[2:])
# A small pool of the partner's own references, so that the same report is often sent again.
report_op = st.tuples(st.just("report"), kind, st.integers(0, 3), st.integers(-5, 0))
burst_op = st.tuples(st.just("burst"), st.lists(st.tuples(kind, st.integers(0, 3)), min_size=2, max_size=4))
jobs_op = st.tuples(st.just("jobs"), st.sampled_from([0, 0, 11]))
operations = st.lists(st.one_of(report_op, report_op, burst_op, jobs_op), min_size=1, max_size=12)


@pytest.fixture(scope="module")
async def catalogue(app: FastAPI, runtime: Runtime) -> Catalogue:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test",
        headers={"X-Forwarded-For": random_ip()},
    ) as client:
        admin = await make_admin(client, runtime)
        return await make_catalogue(
            client,
            admin,
            rules=[
                fixed("applied", "referrer", 20_000, hold_days=0),
                fixed("enrolled", "referrer", 100_000, hold_days=10),
                fixed("enrolled", "referee", 50_000, hold_days=10),
            ],
        )


async def _referral_with_referee(rt: Runtime, cat: Catalogue) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID, str]:
    """An invited lead who then signed up (so both sides can be rewarded)."""
    from referloop.identity.models import User
    from referloop.referrals.lifecycle.service.signups import on_signup_attributed

    referrer, referee = await make_members(rt, 2)
    email = lead_email()
    referral = await invite(rt, referrer, cat.program_id, email=email)
    async with rt.db.sessionmaker() as session, session.begin():
        user = await session.get(User, referee)
        assert user is not None
        user.email = email
        await session.flush()
        await on_signup_attributed(
            session,
            rt,
            {
                "referee_id": str(referee),
                "referrer_id": str(referrer),
                "program_id": str(cat.program_id),
                "via": "code",
                "attributed_at": datetime.now(UTC).isoformat(),
            },
        )
    return referral, referrer, referee, email


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
async def test_any_report_sequence_rewards_each_milestone_at_most_once(
    runtime: Runtime, catalogue: Catalogue, ops: list[tuple[Any, ...]]
) -> None:
    cat = catalogue
    referral, referrer, referee, email = await _referral_with_referee(runtime, cat)
    refs = [f"p-{uuid.uuid4().hex[:10]}" for _ in range(4)]
    base = datetime.now(UTC)
    clock = base

    async def send(kind: str, slot: int, days: int = 0) -> None:
        await report(
            runtime,
            cat.university_id,
            kind,
            email=email,
            external_ref=refs[slot],
            occurred_at=base + timedelta(days=days),
        )

    for op in ops:
        if op[0] == "report":
            await send(op[1], op[2], op[3])
        elif op[0] == "burst":
            await asyncio.gather(*(send(k, s) for k, s in op[1]))
        else:
            clock = clock + timedelta(days=op[1])
            await run_jobs(runtime, now=clock)
    await run_jobs(runtime, now=clock + timedelta(days=11))

    state = (await sql(runtime, "SELECT state FROM referrals WHERE id = :r", r=referral))[0]["state"]
    entries = await sql(
        runtime,
        "SELECT idempotency_key, count(*) AS n FROM ledger_entries WHERE idempotency_key LIKE :k"
        " GROUP BY idempotency_key",
        k=f"reward:{referral}:%",
    )
    assert all(e["n"] == 1 for e in entries)  # one earning per (milestone, side), whatever happened
    rows = await sql(runtime, "SELECT * FROM rewards WHERE referral_id = :r", r=referral)
    assert len(rows) == len({(r["milestone"], r["role"]) for r in rows})
    assert len(entries) == sum(r["ledger_transfer_id"] is not None for r in rows)
    if state == "reversed":
        assert not [
            r for r in rows if r["milestone"] == "enrolled" and r["status"] in ("pending", "released")
        ]
    for member in (referrer, referee):
        mine = [r for r in rows if r["member_id"] == member]
        b = await balance(runtime, member)
        assert b.pending == sum(r["amount"] for r in mine if r["status"] == "pending")
        assert b.available - await owed(runtime, member) == sum(
            r["amount"] for r in mine if r["status"] == "released"
        )
        assert b.available >= 0
    await assert_ledger_sound(runtime)
