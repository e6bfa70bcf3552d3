"""Referral events -> milestones -> daily counters, exactly once.

Each step a referral reaches is one row of `analytics_milestones` (primary key `(referral_id, step)`).
Only the insert of that row adds 1 to the day's counter, so a replayed, duplicated or re-ordered event
never counts twice. When a later-arriving event says a step happened earlier (out-of-order delivery),
or a real report replaces an implied one, the milestone takes the earlier time and, if its day changes,
its count moves from the old day's row to the new one (-1 there, +1 here) in the same transaction."""

from __future__ import annotations

import uuid
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
    step: Step,
    delta: int,
) -> None:
    column = FunnelDaily.__table__.c[step.value]  # a fixed enum of column names, never input
    stmt = pg_insert(FunnelDaily).values(
        day=day,
        program_id=program_id,
        campaign_id=campaign_id,
        referrer_id=referrer_id,
        university_id=university_id,
        **{step.value: max(delta, 0)},
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["day", "program_id", "campaign_id", "referrer_id"],
            set_={step.value: column + delta},
        )
    )


async def record_step(
    session: AsyncSession, key: ReferralKey, step: Step, at: datetime, *, implied: bool = False
) -> bool:
    """Record that the referral reached `step` at `at`. Returns True when a counter changed."""
    inserted = await session.scalar(
        pg_insert(Milestone)
        .values(
            referral_id=key.referral_id,
            step=step.value,
            at=at,
            day=utc_day(at),
            implied=implied,
            referrer_id=key.referrer_id,
            program_id=key.program_id,
            university_id=key.university_id,
            campaign_id=key.campaign_id,
        )
        .on_conflict_do_nothing(index_elements=["referral_id", "step"])
        .returning(Milestone.referral_id)
    )
    if inserted is not None:
        await _add_to_day(
            session, utc_day(at), key.program_id, key.campaign_id, key.referrer_id, key.university_id, step, 1
        )
        return True
    # Known already: a duplicate (nothing to do), or a better time for it (earlier, or real over implied).
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
        await _add_to_day(session, day, *dims, step, delta)
    return True


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
        await _add_to_day(session, m.day, None, m.campaign_id, m.referrer_id, None, step, -1)
        await _add_to_day(
            session, m.day, key.program_id, key.campaign_id, m.referrer_id, key.university_id, step, 1
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
    if step in FUNNEL:
        for earlier in FUNNEL[: FUNNEL.index(step)]:
            await record_step(session, key, earlier, at, implied=True)
    await record_step(session, key, step, at)
