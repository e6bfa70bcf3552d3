"""Outbox events of rewards (`rewards.pending`, `rewards.released`, `rewards.reversed`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.outbox import enqueue
from referloop.referrals.lifecycle.models import Referral
from referloop.referrals.rewards.models import Reward

PENDING_TOPIC = "rewards.pending"
RELEASED_TOPIC = "rewards.released"
REVERSED_TOPIC = "rewards.reversed"


async def emit(session: AsyncSession, topic: str, reward: Reward, referral: Referral, at: datetime) -> None:
    await enqueue(
        session,
        topic,
        {
            "reward_id": str(reward.id),
            "referral_id": str(reward.referral_id),
            "member_id": str(reward.member_id) if reward.member_id else None,
            "role": reward.role,
            "milestone": reward.milestone,
            "amount": reward.amount,
            "currency": reward.currency,
            "program_id": str(reward.program_id),
            "university_id": str(referral.university_id) if referral.university_id else None,
            "campaign_id": str(reward.campaign_id),
            "at": at.isoformat(),
        },
    )
