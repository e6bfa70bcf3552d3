"""The worker's reward jobs: take reversals back, grant queued rewards, release rewards whose hold
is over. Reversals and releases are handled one reward per transaction; grants many per transaction
(`bulk.grant_many`, falling back to one per transaction). Rows another worker holds are skipped
(SKIP LOCKED), so every worker can run every job at once. Grants are taken in the order the
milestones were reached, so a budget about to run out goes roughly first come, first served
(exactly: never past the budget; roughly: two grants racing for the last amount may finish in
either order)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.db import utcnow
from referloop.referrals.lifecycle.models import Referral, ReferralState
from referloop.referrals.rewards.models import Reward, RewardStatus
from referloop.referrals.rewards.service import bulk, grant, settle
from referloop.runtime import Runtime

log = structlog.get_logger(__name__)

DEFAULT_BATCH = 200
# Grants: up to GRANT_PASS per pass, GRANT_CHUNK per transaction, GRANT_LANES transactions at once.
GRANT_PASS = 4_000
GRANT_CHUNK = 500
GRANT_LANES = 3
# Grants at once per worker; each holds a connection (the pool must be larger).
CONCURRENCY = 16

_LIVE_FOR_REVERSAL = (RewardStatus.queued.value, RewardStatus.pending.value, RewardStatus.released.value)


@dataclass
class JobReport:
    reversed: int = 0
    granted: int = 0
    skipped: int = 0
    released: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        return self.reversed + self.granted + self.skipped + self.released


async def due_reversals(session: AsyncSession, limit: int) -> list[uuid.UUID]:
    rows = await session.scalars(
        select(Reward.id)
        .where(Reward.reversal_requested_at.is_not(None), Reward.status.in_(_LIVE_FOR_REVERSAL))
        .order_by(Reward.reversal_requested_at)
        .limit(limit)
    )
    return list(rows)


async def queued_rewards(
    session: AsyncSession, limit: int, referral_ids: Sequence[uuid.UUID] | None = None
) -> list[uuid.UUID]:
    stmt = (
        select(Reward.id)
        .join(Referral, Referral.id == Reward.referral_id)
        .where(Reward.status == RewardStatus.queued.value, Referral.state != ReferralState.fraud_hold.value)
        .order_by(Reward.reached_at, Reward.id)
        .limit(limit)
    )
    if referral_ids is not None:
        stmt = stmt.where(Reward.referral_id.in_(referral_ids))
    return list(await session.scalars(stmt))


async def due_releases(session: AsyncSession, limit: int, now: datetime) -> list[uuid.UUID]:
    rows = await session.scalars(
        select(Reward.id)
        .join(Referral, Referral.id == Reward.referral_id)
        .where(
            Reward.status == RewardStatus.pending.value,
            Reward.release_at <= now,
            Reward.reversal_requested_at.is_(None),
            Referral.state != ReferralState.fraud_hold.value,
        )
        .order_by(Reward.release_at)
        .limit(limit)
    )
    return list(rows)


async def _each(
    rt: Runtime,
    ids: Sequence[uuid.UUID],
    work: Callable[[AsyncSession, uuid.UUID], Awaitable[str | None]],
    concurrency: int,
) -> list[str | None]:
    gate = asyncio.Semaphore(concurrency)

    async def one(reward_id: uuid.UUID) -> str | None:
        async with gate:
            try:
                async with rt.db.sessionmaker() as session, session.begin():
                    return await work(session, reward_id)
            except DBAPIError as exc:  # a deadlock or serialization failure: the next run retries
                log.warning("reward_job_failed", reward_id=str(reward_id), error=str(exc.orig)[:300])
                return "failed"

    return list(await asyncio.gather(*(one(i) for i in ids)))


async def _grant_in_bulk(
    rt: Runtime, limit: int, referral_ids: Sequence[uuid.UUID] | None, concurrency: int
) -> list[str | None]:
    """Grant up to `limit` queued rewards, GRANT_CHUNK per transaction (`bulk.grant_many`), in a few
    lanes at once (each claims with SKIP LOCKED, so they never take the same reward). A chunk whose
    transaction fails (a budget that a concurrent grant spent, a deadlock) is rolled back whole and
    its rewards are granted one per transaction instead."""
    outcomes: list[str | None] = []
    left = [limit]

    async def lane() -> None:
        while left[0] > 0:
            size = min(GRANT_CHUNK, left[0])
            left[0] -= size
            try:
                async with rt.db.sessionmaker() as session, session.begin():
                    done: list[str | None] = list(await bulk.grant_many(session, size, referral_ids))
            except (bulk.BudgetRace, DBAPIError) as exc:
                log.warning("reward_bulk_grant_failed", error=str(exc)[:300])
                async with rt.db.sessionmaker() as session:
                    ids = await queued_rewards(session, size, referral_ids)
                done = await _each(rt, ids, lambda s, i: grant.grant(s, i, skip_locked=True), per_lane)
            outcomes.extend(done)
            if len(done) < size:
                left[0] = 0  # the queue is empty (or the rest is locked by others)

    lanes = max(1, min(GRANT_LANES, concurrency))
    per_lane = max(1, concurrency // lanes)  # the lanes share the connections the caller allows
    await asyncio.gather(*(lane() for _ in range(lanes)))
    return outcomes


async def run_once(
    rt: Runtime,
    *,
    limit: int = DEFAULT_BATCH,
    now: datetime | None = None,
    concurrency: int | None = None,
    referral_ids: Sequence[uuid.UUID] | None = None,
) -> JobReport:
    """One pass of the three jobs. `now` moves the release clock (tests, replays)."""
    report = JobReport()
    now = now or utcnow()
    # Leave the pool a few connections for the rest of the worker (its consumers, the relay).
    concurrency = concurrency or max(1, min(CONCURRENCY, rt.settings.db_pool_size - 4))
    async with rt.db.sessionmaker() as session:
        reversal_ids = await due_reversals(session, limit)
    for outcome in await _each(
        rt, reversal_ids, lambda s, i: settle.reverse(s, i, skip_locked=True), concurrency
    ):
        report.reversed += outcome not in (None, "failed")
        report.failed += outcome == "failed"
    for outcome in await _grant_in_bulk(rt, max(limit, GRANT_PASS), referral_ids, concurrency):
        if outcome == RewardStatus.pending.value:
            report.granted += 1
        elif outcome == "failed":
            report.failed += 1
        elif outcome not in (None, "held"):
            report.skipped += 1
    async with rt.db.sessionmaker() as session:
        release_ids = await due_releases(session, limit, now)
    for outcome in await _each(
        rt, release_ids, lambda s, i: settle.release(s, i, now=now, skip_locked=True), concurrency
    ):
        report.released += outcome == RewardStatus.released.value
        report.failed += outcome == "failed"
    return report


async def run_until_idle(rt: Runtime, *, now: datetime | None = None, max_rounds: int = 50) -> JobReport:
    """Run passes until one does nothing (tests and `referloop rewards run`)."""
    total = JobReport()
    for _ in range(max_rounds):
        report = await run_once(rt, now=now)
        for field in ("reversed", "granted", "skipped", "released", "failed"):
            setattr(total, field, getattr(total, field) + getattr(report, field))
        if report.total == 0:
            break
    return total
