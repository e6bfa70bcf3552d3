"""Referral events -> milestones -> daily counters, exactly once.

Each step a referral reaches is one row of `analytics_milestones` (primary key `(referral_id, step)`).
Only the insert of that row adds 1 to the day's counter, so a replayed, duplicated or re-ordered event
never counts twice. When a later-arriving event says a step happened earlier (out-of-order delivery),
or a real report replaces an implied one, the milestone takes the earlier time and, if its day changes,
its count moves from the old day's row to the new one (-1 there, +1 here) in the same transaction.

The usual event (every step new) costs two statements: one multi-row insert of the milestones, one
upsert of the day's row adding 1 to each new step's column."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import select, update
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


async def record_steps(
    session: AsyncSession, key: ReferralKey, steps: Sequence[tuple[Step, bool]], at: datetime
) -> None:
    """Record that the referral reached each `(step, implied)` at `at`."""
    day = utc_day(at)
    inserted = set(
        await session.scalars(
            pg_insert(Milestone)
            .values(
                [
                    {
                        "referral_id": key.referral_id,
                        "step": step.value,
                        "at": at,
                        "day": day,
                        "implied": implied,
                        "referrer_id": key.referrer_id,
                        "program_id": key.program_id,
                        "university_id": key.university_id,
                        "campaign_id": key.campaign_id,
                    }
                    for step, implied in steps
                ]
            )
            .on_conflict_do_nothing(index_elements=["referral_id", "step"])
            .returning(Milestone.step)
        )
    )
    if inserted:
        await _add_to_day(
            session,
            day,
            key.program_id,
            key.campaign_id,
            key.referrer_id,
            key.university_id,
            {Step(s): 1 for s in inserted},
        )
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
    await _adopt_program(session, key)
    earlier = FUNNEL[: FUNNEL.index(step)] if step in FUNNEL else ()
    await record_steps(session, key, [*((s, True) for s in earlier), (step, False)], at)
