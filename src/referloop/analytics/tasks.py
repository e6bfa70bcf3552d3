"""Consumers that keep the funnel rollups current, and the periodic click jobs.

Consumers take the lifecycle's outbox events (payload keys per the referrals contract: ids as
strings, times RFC 3339). The consumer framework records each handled event in the inbox, and the
milestone table makes the counters idempotent on their own as well (see `service/rollup.py`).

`rewards.*` events are not consumed: the funnel's last step, rewarded, is the lifecycle's own state
change (made when the enrolment reward is released), and reward amounts are the ledger's business."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.analytics.models import Step
from referloop.analytics.service.clicks import catch_up_clicks, recount_clicks
from referloop.analytics.service.rollup import ReferralKey, record_reached
from referloop.core.outbox.consumers import consumer
from referloop.core.periodic import periodic
from referloop.runtime import Runtime

log = structlog.get_logger(__name__)

REFERRAL_CREATED = "referrals.referral_created"
STATE_CHANGED = "referrals.state_changed"


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


def referral_key(payload: dict[str, Any]) -> ReferralKey | None:
    ids = {
        name: _uuid(payload.get(name))
        for name in ("referral_id", "referrer_id", "program_id", "university_id", "campaign_id")
    }
    referral_id, referrer_id = ids["referral_id"], ids["referrer_id"]
    if referral_id is None or referrer_id is None:
        return None
    # A sign-up credited by code alone has no program (nor university): counted for the referrer.
    return ReferralKey(referral_id, referrer_id, ids["program_id"], ids["university_id"], ids["campaign_id"])


def _at(payload: dict[str, Any]) -> datetime | None:
    try:
        at = datetime.fromisoformat(str(payload["at"]))
    except (KeyError, ValueError):
        return None
    return at if at.tzinfo is not None else None


async def _reached(event_id: uuid.UUID, payload: dict[str, Any], state: Any, session: AsyncSession) -> None:
    key, at = referral_key(payload), _at(payload)
    try:
        step = Step(str(state))
    except ValueError:
        step = None
    if key is None or at is None or step is None:
        # A malformed event would fail the same way on every retry: log it and move on.
        log.warning("analytics_event_skipped", event_id=str(event_id), state=str(state))
        return
    await record_reached(session, key, step, at)


@consumer("analytics.referral_created", REFERRAL_CREATED)
async def on_referral_created(
    session: AsyncSession, rt: Runtime, event_id: uuid.UUID, payload: dict[str, Any]
) -> None:
    """A new referral counts in the step it starts in (invited for a lead, signed_up for a sign-up)."""
    await _reached(event_id, payload, payload.get("state"), session)


@consumer("analytics.state_changed", STATE_CHANGED)
async def on_state_changed(
    session: AsyncSession, rt: Runtime, event_id: uuid.UUID, payload: dict[str, Any]
) -> None:
    await _reached(event_id, payload, payload.get("to_state"), session)


@periodic("analytics.click_rollup", every=15)
async def click_rollup_job(rt: Runtime) -> int:
    return await catch_up_clicks(rt)


@periodic("analytics.click_recount", every=3600)
async def click_recount_job(rt: Runtime) -> int:
    return await recount_clicks(rt)
