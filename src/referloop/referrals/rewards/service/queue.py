"""What the lifecycle calls when a referral reaches a milestone or is reversed.

Reaching a milestone queues one reward row per live rule of the referral's campaign for that
milestone. The row is unique per (referral, milestone, role): a milestone reported twice, replayed
or raced queues once. The worker grants queued rows one per transaction (see `grant`), so a
partner's batch never holds budget or ledger locks."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select, update
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
    """Queue the rewards of `milestone` for `referral`; returns how many rows were new."""
    if referral.campaign_id is None or referral.program_id is None:
        return 0
    currency = await session.scalar(select(Campaign.currency).where(Campaign.id == referral.campaign_id))
    rules = (
        await session.execute(
            select(RewardRule.id, RewardRule.role).where(
                RewardRule.campaign_id == referral.campaign_id,
                RewardRule.milestone == milestone.value,
                RewardRule.deleted_at.is_(None),
            )
        )
    ).all()
    if not rules or currency is None:
        return 0
    now = utcnow()
    rows = [
        {
            "id": uuid7(),
            "referral_id": referral.id,
            "referrer_id": referral.member_id,
            "member_id": referral.member_id if role == RewardRole.referrer.value else referral.referee_id,
            "role": role,
            "milestone": milestone.value,
            "campaign_id": referral.campaign_id,
            "rule_id": rule_id,
            "program_id": referral.program_id,
            "status": RewardStatus.queued.value,
            "currency": currency,
            "reached_at": at,
            "created_at": now,
            "updated_at": now,
        }
        for rule_id, role in rules
    ]
    result = await session.execute(
        pg_insert(Reward)
        .values(rows)
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
