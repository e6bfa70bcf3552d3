"""Staff actions on referrals (support, admin): fraud holds. Every action is audited (see states)."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.context import RequestContext
from referloop.identity.service.sessions import Principal
from referloop.referrals.lifecycle.models import ActorType, Referral
from referloop.referrals.lifecycle.service import states


async def place_fraud_hold(
    session: AsyncSession, actor: Principal, referral_id: uuid.UUID, reason: str, ctx: RequestContext
) -> Referral:
    referral = await states.lock_referral(session, referral_id)
    await states.put_on_hold(
        session, referral, actor=states.Actor(ActorType.staff, actor.user_id), reason=reason, ctx=ctx
    )
    return referral


async def lift_fraud_hold(
    session: AsyncSession, actor: Principal, referral_id: uuid.UUID, reason: str, ctx: RequestContext
) -> Referral:
    referral = await states.lock_referral(session, referral_id)
    await states.lift_hold(
        session, referral, actor=states.Actor(ActorType.staff, actor.user_id), reason=reason, ctx=ctx
    )
    return referral
