"""What the lifecycle calls when a referral reaches a milestone or is reversed.

Reaching a milestone queues one reward row per live rule of the referral's campaign for that
milestone. The row is unique per (referral, milestone, role): a milestone reported twice, replayed
or raced queues once. The worker grants queued rows one per transaction (see `grant`), so a
partner's batch never holds budget or ledger locks."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.db import utcnow
from referloop.core.ids import uuid7
from referloop.referrals.lifecycle.models import Referral
from referloop.referrals.rewards.models import (
    Milestone,
    Reward,
    RewardStatus,
)

# The campaign's live rules for the milestone, inserted unless already queued: one statement. At
# most one live rule per role (a unique index), so two fresh UUIDv7 ids cover them.
_QUEUE = text(
    "INSERT INTO rewards (id, referral_id, referrer_id, member_id, role, milestone, campaign_id, rule_id,"
    " program_id, status, currency, reached_at, created_at, updated_at)"
    " SELECT CASE WHEN r.role = 'referrer' THEN CAST(:referrer_reward AS uuid)"
    "             ELSE CAST(:referee_reward AS uuid) END,"
    "        :referral_id, :referrer_id,"
    "        CASE WHEN r.role = 'referrer' THEN CAST(:referrer_id AS uuid) ELSE CAST(:referee_id AS uuid) END,"
    "        r.role, r.milestone, r.campaign_id, r.id, :program_id, 'queued', c.currency, :at, :now, :now"
    " FROM reward_rules r JOIN campaigns c ON c.id = r.campaign_id"
    " WHERE r.campaign_id = :campaign_id AND r.milestone = :milestone AND r.deleted_at IS NULL"
    " ON CONFLICT (referral_id, milestone, role) DO NOTHING"
)


async def queue_milestone(
    session: AsyncSession, referral: Referral, milestone: Milestone, at: datetime
) -> int:
    """Queue the rewards of `milestone` for `referral`; returns how many rows were new."""
    if referral.campaign_id is None or referral.program_id is None:
        return 0
    now = utcnow()
    result = await session.execute(
        _QUEUE,
        {
            "referrer_reward": uuid7(),
            "referee_reward": uuid7(),
            "referral_id": referral.id,
            "referrer_id": referral.member_id,
            "referee_id": referral.referee_id,
            "program_id": referral.program_id,
            "campaign_id": referral.campaign_id,
            "milestone": milestone.value,
            "at": at,
            "now": now,
        },
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


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
