"""What the lifecycle calls when a referral reaches a milestone or is reversed.

Reaching a milestone queues one reward row per live rule of the referral's campaign for that
milestone. The row is unique per (referral, milestone, role): a milestone reported twice, replayed
or raced queues once. The worker grants queued rows one per transaction (see `grant`), so a
partner's batch never holds budget or ledger locks."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Uuid, case, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.db import utcnow
from referloop.core.ids import uuid7
from referloop.referrals.lifecycle.models import Referral
from referloop.referrals.models import Campaign
from referloop.referrals.rewards.models import (
    Milestone,
    Reward,
    RewardRole,
    RewardRule,
    RewardStatus,
)


async def queue_milestone(
    session: AsyncSession, referral: Referral, milestone: Milestone, at: datetime
) -> int:
    """Queue the rewards of `milestone` for `referral`; returns how many rows were new. One
    statement: the campaign's live rules for the milestone, inserted unless already queued."""
    if referral.campaign_id is None or referral.program_id is None:
        return 0
    now = utcnow()
    # At most one live rule per role (a unique index), so two fresh UUIDv7 ids cover them.
    referrer_id, referee_id = uuid7(), uuid7()
    rules = (
        select(
            case(
                (RewardRule.role == RewardRole.referrer.value, literal(referrer_id, type_=Uuid())),
                else_=literal(referee_id, type_=Uuid()),
            ),
            literal(referral.id),
            literal(referral.member_id),
            case(
                (RewardRule.role == RewardRole.referrer.value, literal(referral.member_id)),
                else_=literal(referral.referee_id, type_=Uuid()),
            ),
            RewardRule.role,
            RewardRule.milestone,
            RewardRule.campaign_id,
            RewardRule.id,
            literal(referral.program_id),
            literal(RewardStatus.queued.value),
            Campaign.currency,
            literal(at),
            literal(now),
            literal(now),
        )
        .join(Campaign, Campaign.id == RewardRule.campaign_id)
        .where(
            RewardRule.campaign_id == referral.campaign_id,
            RewardRule.milestone == milestone.value,
            RewardRule.deleted_at.is_(None),
        )
    )
    result = await session.execute(
        pg_insert(Reward)
        .from_select(
            [
                "id",
                "referral_id",
                "referrer_id",
                "member_id",
                "role",
                "milestone",
                "campaign_id",
                "rule_id",
                "program_id",
                "status",
                "currency",
                "reached_at",
                "created_at",
                "updated_at",
            ],
            rules,
        )
        .on_conflict_do_nothing(index_elements=["referral_id", "milestone", "role"])
        .returning(Reward.id)
    )
    return len(result.all())


async def request_reversal(session: AsyncSession, referral_id: uuid.UUID, at: datetime) -> int:
    """Ask for the enrolment's rewards back (the worker voids or claws them back). Rewards of the
    earlier milestones (sign-up, application) stand: those happened."""
    result = await session.execute(
        update(Reward)
        .where(
            Reward.referral_id == referral_id,
            Reward.milestone == Milestone.enrolled.value,
            Reward.status.in_(
                (RewardStatus.queued.value, RewardStatus.pending.value, RewardStatus.released.value)
            ),
            Reward.reversal_requested_at.is_(None),
        )
        .values(reversal_requested_at=at, updated_at=utcnow())
        .returning(Reward.id)
    )
    return len(result.all())
