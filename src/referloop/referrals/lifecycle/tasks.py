"""Worker side of the lifecycle: attributed sign-ups become referrals; invitations expire."""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.outbox.consumers import consumer
from referloop.core.periodic import periodic
from referloop.referrals.lifecycle.service.expiry import expire_due
from referloop.referrals.lifecycle.service.signups import on_signup_attributed
from referloop.referrals.service.attribution import ATTRIBUTED_TOPIC
from referloop.runtime import Runtime

log = structlog.get_logger(__name__)

EXPIRY_BATCH = 100


@consumer("referrals.signup_referral", ATTRIBUTED_TOPIC)
async def handle_signup_attributed(
    session: AsyncSession, rt: Runtime, event_id: uuid.UUID, payload: dict[str, Any]
) -> None:
    ids = await on_signup_attributed(session, rt, payload)
    log.info("signup_referrals", event_id=str(event_id), referral_ids=[str(i) for i in ids])


@periodic("referrals.expire_invitations", every=60.0, full_batch=EXPIRY_BATCH)
async def expire_invitations(rt: Runtime) -> int:
    return await expire_due(rt, limit=EXPIRY_BATCH)
