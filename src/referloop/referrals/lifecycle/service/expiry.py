"""Invitations nobody took up within their window expire (a periodic job of the worker)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from referloop.core.db import utcnow
from referloop.referrals.lifecycle.models import Referral, ReferralState
from referloop.referrals.lifecycle.service import states
from referloop.runtime import Runtime


async def expire_due(rt: Runtime, *, now: datetime | None = None, limit: int = 100) -> int:
    """Expire up to `limit` invitations past `expires_at`; returns how many. Rows another worker
    holds are skipped, so every worker may run this at once."""
    now = now or utcnow()
    async with rt.db.sessionmaker() as session, session.begin():
        due = list(
            await session.scalars(
                select(Referral)
                .where(Referral.state == ReferralState.invited.value, Referral.expires_at <= now)
                .order_by(Referral.expires_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        for referral in due:
            await states.transition(
                session,
                referral,
                ReferralState.expired,
                actor=states.SYSTEM,
                reason="the invitation was not taken up within its window",
            )
    return len(due)
