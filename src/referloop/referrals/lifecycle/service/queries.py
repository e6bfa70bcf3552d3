"""Reading referrals: a member's own (filters, cursor, timeline, stats) and staff search.

A member sees only referrals they made (`member_id`); someone else's referral id answers 404, the
same as one that does not exist. The referee is shown as first name and initial, nothing more."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, cast

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from referloop import ledger
from referloop.analytics.schemas import MemberFunnelFiltersOut, member_funnel_out
from referloop.analytics.service.funnel import Granularity, bounded_range, member_funnel
from referloop.core.db import utcnow
from referloop.core.pagination import paginate_by_id_desc, split_page
from referloop.disputes.models import SubjectType
from referloop.disputes.subjects import register_subject
from referloop.referrals.lifecycle.errors import ReferralNotFound
from referloop.referrals.lifecycle.models import ActorType, Referral, ReferralEvent, ReferralState
from referloop.referrals.lifecycle.schemas import (
    Earnings,
    ProgramRef,
    RefereeOut,
    ReferralOut,
    ReferralStats,
    StaffReferralOut,
    TimelineItem,
)
from referloop.referrals.lifecycle.service.states import allowed_moves
from referloop.referrals.models import Program, University
from referloop.referrals.rewards.models import (
    SKIP_REASON_TEXT,
    Milestone,
    Reward,
    RewardRole,
    RewardStatus,
    SkipReason,
)
from referloop.referrals.rewards.schemas import RewardOut
from referloop.referrals.rewards.service.settle import owed_by
from referloop.referrals.schemas import Money


@dataclass(frozen=True)
class ReferralFilters:
    state: ReferralState | None = None
    program_id: uuid.UUID | None = None
    since: datetime | None = None  # created at or after
    until: datetime | None = None  # created before
    member_id: uuid.UUID | None = None  # staff
    university_id: uuid.UUID | None = None  # staff


Row = tuple[Referral, str | None, str | None]


def referral_select() -> Select[Any]:
    stmt = (
        select(Referral, Program.name, University.name)
        .outerjoin(Program, Program.id == Referral.program_id)
        .outerjoin(University, University.id == Referral.university_id)
    )
    # Typed loosely so the shared pagination helpers accept it; rows are (Referral, name, name).
    return cast("Select[Any]", stmt)


def filtered_referrals(stmt: Select[Any], f: ReferralFilters) -> Select[Any]:
    if f.member_id is not None:
        stmt = stmt.where(Referral.member_id == f.member_id)
    if f.state is not None:
        stmt = stmt.where(Referral.state == f.state.value)
    if f.program_id is not None:
        stmt = stmt.where(Referral.program_id == f.program_id)
    if f.university_id is not None:
        stmt = stmt.where(Referral.university_id == f.university_id)
    if f.since is not None:
        stmt = stmt.where(Referral.created_at >= f.since)
    if f.until is not None:
        stmt = stmt.where(Referral.created_at < f.until)
    return stmt


def referral_out(row: Row) -> ReferralOut:
    return ReferralOut(**_fields(row))


def _fields(row: Row) -> dict[str, Any]:
    referral, program_name, university_name = row
    return {
        "id": referral.id,
        "state": ReferralState(referral.state),
        "source": referral.source,
        "program": ProgramRef(
            id=referral.program_id, name=program_name or "", university_name=university_name or ""
        )
        if referral.program_id
        else None,
        "campaign_id": referral.campaign_id,
        "referee": RefereeOut(name=referral.referee_label, registered=referral.referee_id is not None),
        "invited_at": referral.invited_at,
        "signed_up_at": referral.signed_up_at,
        "applied_at": referral.applied_at,
        "enrolled_at": referral.enrolled_at,
        "rewarded_at": referral.rewarded_at,
        "expires_at": referral.expires_at,
        "state_changed_at": referral.state_changed_at,
        "created_at": referral.created_at,
    }


def staff_referral_out(row: Row) -> StaffReferralOut:
    referral = row[0]
    return StaffReferralOut(
        **_fields(row),
        member_id=referral.member_id,
        referee_id=referral.referee_id,
        held_from_state=ReferralState(referral.held_from_state) if referral.held_from_state else None,
        allowed_transitions=allowed_moves(referral),
        university_id=referral.university_id,
    )


async def list_referrals(
    session: AsyncSession, filters: ReferralFilters, *, cursor: str | None, limit: int
) -> tuple[list[Row], str | None]:
    stmt = paginate_by_id_desc(filtered_referrals(referral_select(), filters), Referral.id, cursor, limit)
    rows: list[Row] = [(r, p, u) for r, p, u in await session.execute(stmt)]
    return split_page(rows, limit, lambda r: [r[0].id])


async def get_referral(session: AsyncSession, referral_id: uuid.UUID, *, member_id: uuid.UUID | None) -> Row:
    """`member_id`: the referrer who asks (None for staff)."""
    stmt = referral_select().where(Referral.id == referral_id)
    if member_id is not None:
        stmt = stmt.where(Referral.member_id == member_id)
    row = (await session.execute(stmt)).first()
    if row is None:
        raise ReferralNotFound("No such referral.")
    return row[0], row[1], row[2]


async def timeline(session: AsyncSession, referral_id: uuid.UUID, *, for_staff: bool) -> list[TimelineItem]:
    events = await session.scalars(
        select(ReferralEvent).where(ReferralEvent.referral_id == referral_id).order_by(ReferralEvent.id)
    )
    return [
        TimelineItem(
            from_state=ReferralState(e.from_state) if e.from_state else None,
            to_state=ReferralState(e.to_state),
            actor=ActorType(e.actor_type),
            # Staff reasons (a fraud suspicion...) are for staff.
            reason=e.reason if for_staff or e.actor_type != ActorType.staff.value else None,
            occurred_at=e.occurred_at,
        )
        for e in events
    ]


def reward_out(reward: Reward) -> RewardOut:
    reason = SkipReason(reward.reason) if reward.reason else None
    return RewardOut(
        id=reward.id,
        milestone=Milestone(reward.milestone),
        role=RewardRole(reward.role),
        status=RewardStatus(reward.status),
        amount=Money(amount=reward.amount, currency=reward.currency) if reward.amount else None,
        reason=reason.value if reason else None,
        reason_text=SKIP_REASON_TEXT.get(reason) if reason else None,
        basis=reward.basis,
        release_at=reward.release_at,
        released_at=reward.released_at,
        reversed_at=reward.reversed_at,
        receivable=Money(amount=reward.receivable_amount, currency=reward.currency)
        if reward.receivable_amount
        else None,
    )


async def rewards_of(
    session: AsyncSession, referral_id: uuid.UUID, *, member_id: uuid.UUID | None
) -> list[RewardOut]:
    """The referral's rewards: a member sees those paid to them (`member_id`); staff see all."""
    stmt = select(Reward).where(Reward.referral_id == referral_id)
    if member_id is not None:
        # The referrer's side; a referee-side reward is the referee's business.
        stmt = stmt.where(Reward.referrer_id == member_id, Reward.role == "referrer")
    return [reward_out(r) for r in await session.scalars(stmt.order_by(Reward.id))]


@dataclass(frozen=True)
class FunnelQuery:
    """The funnel part of the stats: the same filters as the staff funnel, for one referrer."""

    program_id: uuid.UUID | None = None
    campaign_id: uuid.UUID | None = None
    date_from: date | None = None
    date_to: date | None = None
    granularity: Granularity = Granularity.day


async def stats(
    session: AsyncSession, member_id: uuid.UUID, funnel: FunnelQuery | None = None
) -> ReferralStats:
    """All-time counts per state, conversion and balances, and the member's own funnel from the
    analytics rollups (`funnel`: filters and range; a bad range answers 422)."""
    funnel = funnel or FunnelQuery()
    first, last = bounded_range(funnel.date_from, funnel.date_to, funnel.granularity, utcnow().date())
    report = await member_funnel(
        session,
        member_id,
        first=first,
        last=last,
        program_id=funnel.program_id,
        campaign_id=funnel.campaign_id,
        granularity=funnel.granularity,
    )
    counts = dict(
        (
            await session.execute(
                select(Referral.state, func.count())
                .where(Referral.member_id == member_id)
                .group_by(Referral.state)
            )
        ).all()
    )
    converted = int(
        await session.scalar(
            select(func.count()).where(
                Referral.member_id == member_id,
                Referral.enrolled_at.is_not(None),
                Referral.state != ReferralState.reversed.value,
            )
        )
        or 0
    )
    total = sum(int(v) for v in counts.values())
    balances = await ledger.balances_for(session, member_id)
    owed = []
    for b in balances:
        amount = await owed_by(session, member_id, b.currency)
        if amount:
            owed.append(Money(amount=amount, currency=b.currency))
    return ReferralStats(
        total=total,
        by_state={s: int(counts.get(s.value, 0)) for s in ReferralState},
        converted=converted,
        conversion_rate=round(converted / total, 4) if total else 0.0,
        earnings=[
            Earnings(
                currency=b.currency,
                pending=Money(amount=b.pending, currency=b.currency),
                available=Money(amount=b.available, currency=b.currency),
            )
            for b in balances
        ],
        owed=owed,
        funnel=member_funnel_out(
            report,
            funnel.granularity,
            MemberFunnelFiltersOut(program_id=funnel.program_id, campaign_id=funnel.campaign_id),
        ),
    )


async def member_owns_referral(session: AsyncSession, member_id: uuid.UUID, referral_id: uuid.UUID) -> bool:
    """Disputes: a member may dispute a referral they made or were referred by."""
    found = await session.scalar(
        select(Referral.id).where(
            Referral.id == referral_id,
            (Referral.member_id == member_id) | (Referral.referee_id == member_id),
        )
    )
    return found is not None


register_subject(SubjectType.referral, member_owns_referral)
