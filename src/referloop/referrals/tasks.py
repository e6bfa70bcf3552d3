"""Event consumers of the referrals domain (plain async handlers: `(session, rt, event_id, payload)`).

The outbox consumer framework records `(consumer, event_id)` before calling a handler, in the same
transaction, so a redelivered event is handled once; handlers here are also idempotent on their own
(one attribution per new member)."""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.errors import NotFound
from referloop.core.outbox.consumers import consumer
from referloop.identity.service.accounts import get_user
from referloop.referrals.service.attribution import attribute_signup
from referloop.runtime import Runtime

log = structlog.get_logger(__name__)

USER_REGISTERED = "identity.user_registered"
ATTRIBUTION_CONSUMER = "referrals.attribute_signup"


def _uuid_or_none(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


async def handle_user_registered(
    session: AsyncSession, rt: Runtime, event_id: uuid.UUID, payload: dict[str, Any]
) -> None:
    """`identity.user_registered` -> attribute the sign-up to its referrer, if any.

    Payload: user_id, invited_with_code, referral_code; and, when identity passes them on, click_id
    (the `rl_click` cookie) and device_id (the app's install id)."""
    try:
        user = await get_user(session, uuid.UUID(str(payload["user_id"])))
    except NotFound:
        return  # the account was closed before the event was handled: nothing to credit
    code = payload.get("invited_with_code")
    device_id = payload.get("device_id")
    result = await attribute_signup(
        session,
        rt,
        user,
        str(code) if code else None,
        _uuid_or_none(payload.get("click_id")),
        str(device_id)[:200] if device_id else None,
    )
    log.info(
        "signup_attribution",
        event_id=str(event_id),
        user_id=str(user.id),
        outcome=result.outcome.value,
        reason=result.reason,
        referrer_id=str(result.referrer_id) if result.referrer_id else None,
    )


consumer(ATTRIBUTION_CONSUMER, USER_REGISTERED)(handle_user_registered)
