"""Referral events -> milestones -> daily counters, exactly once.

Each step a referral reaches is one row of `analytics_milestones` (primary key `(referral_id, step)`).
Only the insert of that row adds 1 to the day's counter, so a replayed, duplicated or re-ordered event
never counts twice. When a later-arriving event says a step happened earlier (out-of-order delivery),
or a real report replaces an implied one, the milestone takes the earlier time and, if its day changes,
its count moves from the old day's row to the new one (-1 there, +1 here) in the same transaction.

The usual event (every step new) costs one statement (see `_RECORD`); the rest (a better time for a
known step, a program named after the sign-up) is rare and takes a few more."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import bindparam, select, text, update
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.analytics.models import FUNNEL, FunnelDaily, Milestone, Step


@dataclass(frozen=True, slots=True)
class ReferralKey:
    """The dimensions a referral's milestones are counted under."""

    referral_id: uuid.UUID
    referrer_id: uuid.UUID
    program_id: uuid.UUID | None
    university_id: uuid.UUID | None
    campaign_id: uuid.UUID | None


def utc_day(at: datetime) -> date:
    return at.astimezone(UTC).date()


async def _add_to_day(
    session: AsyncSession,
    day: date,
    program_id: uuid.UUID | None,
    campaign_id: uuid.UUID | None,
    referrer_id: uuid.UUID,
    university_id: uuid.UUID | None,
    deltas: dict[Step, int],
) -> None:
    """Add to the day's counters (a fixed enum of column names, never input)."""
    columns = FunnelDaily.__table__.c
    stmt = pg_insert(FunnelDaily).values(
        day=day,
        program_id=program_id,
        campaign_id=campaign_id,
        referrer_id=referrer_id,
        university_id=university_id,
        **{step.value: max(delta, 0) for step, delta in deltas.items()},
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["day", "program_id", "campaign_id", "referrer_id"],
            set_={step.value: columns[step.value] + delta for step, delta in deltas.items()},
        )
    )


async def _improve(session: AsyncSession, key: ReferralKey, step: Step, at: datetime, implied: bool) -> bool:
    """A step already recorded: a duplicate (nothing to do), or a better time for it (earlier, or a
    real report over an implied one), which may move its count to another day."""
    existing = await session.scalar(
        select(Milestone)
        .where(Milestone.referral_id == key.referral_id, Milestone.step == step.value)
        .with_for_update()
    )
    if existing is None:  # pragma: no cover - rows are never deleted
        return False
    better = (existing.implied and not implied) or (existing.implied == implied and at < existing.at)
    if not better:
        return False
    old_day, new_day = existing.day, utc_day(at)
    await session.execute(
        update(Milestone)
        .where(Milestone.referral_id == key.referral_id, Milestone.step == step.value)
        .values(at=at, day=new_day, implied=implied)
        .execution_options(synchronize_session=False)
    )
    if old_day == new_day:
        return False
    dims = (existing.program_id, existing.campaign_id, existing.referrer_id, existing.university_id)
    # Rows locked in day order, as every mover does, so two movers cannot deadlock on each other.
    for day, delta in sorted(((old_day, -1), (new_day, 1))):
        await _add_to_day(session, day, *dims, {step: delta})
    return True


_STEP_COLUMNS = ", ".join(s.value for s in Step)
# The usual event in one round trip: insert the milestones not known yet, add 1 per new one to the
# day's row (a column of a step not inserted gets + 0), and say whether the referral has milestones
# recorded before it had a program. Column names come from the Step enum, never from input.
_RECORD = text(
    f"""
WITH wanted AS (
    SELECT unnest(CAST(:steps AS text[])) AS step, unnest(CAST(:implied AS boolean[])) AS implied
), ins AS (
    INSERT INTO analytics_milestones
        (referral_id, step, at, day, implied, referrer_id, program_id, university_id, campaign_id)
    SELECT :referral_id, step, :at, :day, implied, :referrer_id, :program_id, :university_id, :campaign_id
    FROM wanted
    ON CONFLICT (referral_id, step) DO NOTHING
    RETURNING step
), counted AS (
    INSERT INTO analytics_funnel_daily (day, program_id, campaign_id, referrer_id, university_id, {_STEP_COLUMNS})
    SELECT :day, :program_id, :campaign_id, :referrer_id, :university_id,
        {", ".join(f"count(*) FILTER (WHERE step = '{s.value}')" for s in Step)}
    FROM ins
    HAVING count(*) > 0
    ON CONFLICT (day, program_id, campaign_id, referrer_id) DO UPDATE SET
        {", ".join(f"{s.value} = analytics_funnel_daily.{s.value} + EXCLUDED.{s.value}" for s in Step)}
    RETURNING 1
)
SELECT
    coalesce((SELECT array_agg(step) FROM ins), CAST('{{}}' AS text[])) AS inserted,
    CAST(:program_id AS uuid) IS NOT NULL AND EXISTS (
        SELECT 1 FROM analytics_milestones
        WHERE referral_id = :referral_id AND program_id IS NULL
    ) AS homeless
"""  # noqa: S608 - column names from the Step enum, values bound
).bindparams(
    bindparam("referral_id", type_=UUID(as_uuid=True)),
    bindparam("referrer_id", type_=UUID(as_uuid=True)),
    bindparam("program_id", type_=UUID(as_uuid=True)),
    bindparam("university_id", type_=UUID(as_uuid=True)),
    bindparam("campaign_id", type_=UUID(as_uuid=True)),
)


async def record_steps(
    session: AsyncSession, key: ReferralKey, steps: Sequence[tuple[Step, bool]], at: datetime
) -> None:
    """Record that the referral reached each `(step, implied)` at `at`."""
    row = (
        await session.execute(
            _RECORD,
            {
                "steps": [step.value for step, _ in steps],
                "implied": [implied for _, implied in steps],
                "referral_id": key.referral_id,
                "at": at,
                "day": utc_day(at),
                "referrer_id": key.referrer_id,
                "program_id": key.program_id,
                "university_id": key.university_id,
                "campaign_id": key.campaign_id,
            },
        )
    ).one()
    inserted = set(row.inserted)
    if row.homeless:
        await _adopt_program(session, key)
    for step, implied in steps:
        if step.value not in inserted:
            await _improve(session, key, step, at, implied)


async def record_step(
    session: AsyncSession, key: ReferralKey, step: Step, at: datetime, *, implied: bool = False
) -> None:
    await record_steps(session, key, [(step, implied)], at)


async def _adopt_program(session: AsyncSession, key: ReferralKey) -> None:
    """A sign-up credited by code alone has no program until a partner's report names one: its
    milestones so far move from the no-program rows to the program's (and campaign's) rows."""
    if key.program_id is None:
        return
    homeless = (
        await session.scalars(
            select(Milestone)
            .where(Milestone.referral_id == key.referral_id, Milestone.program_id.is_(None))
            .order_by(Milestone.step)
            .with_for_update()
        )
    ).all()
    if not homeless:
        return
    for m in homeless:
        step = Step(m.step)
        await _add_to_day(session, m.day, None, m.campaign_id, m.referrer_id, None, {step: -1})
        await _add_to_day(
            session, m.day, key.program_id, key.campaign_id, m.referrer_id, key.university_id, {step: 1}
        )
    await session.execute(
        update(Milestone)
        .where(Milestone.referral_id == key.referral_id, Milestone.program_id.is_(None))
        .values(program_id=key.program_id, university_id=key.university_id, campaign_id=key.campaign_id)
        .execution_options(synchronize_session=False)
    )


async def record_reached(session: AsyncSession, key: ReferralKey, step: Step, at: datetime) -> None:
    """A referral reached `step`: record it, and the funnel steps before it as implied ones."""
    earlier = FUNNEL[: FUNNEL.index(step)] if step in FUNNEL else ()
    await record_steps(session, key, [*((s, True) for s in earlier), (step, False)], at)
