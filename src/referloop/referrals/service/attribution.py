"""Crediting a sign-up to the member who referred it.

Rules (documented in the API too):
- A sign-up may carry a click id (the `rl_click` cookie or link parameter) and/or a referral code.
- Last click wins: the click id names the visitor's most recent click (each click replaces the
  cookie), so a valid click id decides the referrer and the program, even over a typed code of
  someone else. A click is valid if it was made by a person (not a known bot) within the attribution
  window of the campaign that applies (default 30 days) before the sign-up.
- Otherwise the referral code decides the referrer (member code or vanity code), with no program.
- Self-referral is refused and nothing is written: the referrer is the new member, or has the same
  email (Gmail dots and +tags ignored), the same phone, or has used the same device id.
- One attribution per new member: a replay of the same sign-up answers `already_attributed`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.db import utcnow
from referloop.core.errors import NotFound
from referloop.core.outbox import enqueue
from referloop.identity.models import User
from referloop.referrals.models import Attribution, AttributionVia
from referloop.referrals.service.campaigns import choose_campaign
from referloop.referrals.service.clicks import find_click
from referloop.referrals.service.codes import device_seen_on, remember_device, resolve_code
from referloop.referrals.service.members import MemberFacts, canonical_email, member_facts
from referloop.runtime import Runtime

log = structlog.get_logger(__name__)

ATTRIBUTED_TOPIC = "referrals.signup_attributed"


class Outcome(StrEnum):
    attributed = "attributed"
    already_attributed = "already_attributed"
    no_referrer = "no_referrer"  # nothing given, or nothing valid (unknown code, expired or bot click)
    self_referral = "self_referral"


class SelfReferral(StrEnum):
    same_member = "same_member"
    same_email = "same_email"
    same_phone = "same_phone"
    same_device = "same_device"


@dataclass(frozen=True, slots=True)
class AttributionResult:
    outcome: Outcome
    reason: str | None = None  # why nothing was attributed, or which self-referral rule refused it
    attribution_id: uuid.UUID | None = None
    referrer_id: uuid.UUID | None = None
    program_id: uuid.UUID | None = None
    campaign_id: uuid.UUID | None = None
    click_id: uuid.UUID | None = None
    via: AttributionVia | None = None


@dataclass(frozen=True, slots=True)
class _Candidate:
    referrer_id: uuid.UUID
    via: AttributionVia
    code: str | None
    program_id: uuid.UUID | None = None
    click_id: uuid.UUID | None = None


def self_referral_reason(
    referrer: MemberFacts, new_user: User, *, device_on_referrer: bool
) -> SelfReferral | None:
    if referrer.id == new_user.id:
        return SelfReferral.same_member
    if (
        referrer.email
        and new_user.email
        and canonical_email(referrer.email) == canonical_email(new_user.email)
    ):
        return SelfReferral.same_email
    if referrer.phone and new_user.phone and referrer.phone == new_user.phone:
        return SelfReferral.same_phone
    if device_on_referrer:
        return SelfReferral.same_device
    return None


async def _click_candidate(
    session: AsyncSession, rt: Runtime, click_id: uuid.UUID, at: datetime
) -> tuple[_Candidate | None, str | None]:
    click = await find_click(session, rt, click_id)
    if click is None:
        return None, "unknown click id"
    if click.is_bot:
        return None, "the click was made by a known bot"
    try:
        referrer = await member_facts(session, click.member_id)
    except NotFound:
        return None, "the referrer's account is closed"
    campaign = await choose_campaign(session, click.program_id, referrer, at)
    window = timedelta(
        days=campaign.attribution_window_days if campaign else rt.settings.referral_attribution_window_days
    )
    if click.clicked_at > at or at - click.clicked_at > window:
        return None, "the click is outside the attribution window"
    return _Candidate(click.member_id, AttributionVia.click, None, click.program_id, click.id), None


async def attribute_signup(
    session: AsyncSession,
    rt: Runtime,
    new_user: User,
    referral_code: str | None,
    click_id: uuid.UUID | None,
    device_id: str | None,
    *,
    at: datetime | None = None,
) -> AttributionResult:
    """Credit `new_user`'s sign-up to a referrer (rules in the module doc). On success writes one
    `attributions` row and the outbox event `referrals.signup_attributed`, and remembers the new
    member's device; refused or unattributed sign-ups write nothing. Only flushes. `at` is the
    moment judged (windows, campaigns); by default the sign-up's own, not when a worker that fell
    behind gets to the event: a click near the end of its window still counts."""
    at = at or new_user.created_at or utcnow()
    existing = await session.scalar(select(Attribution).where(Attribution.referee_id == new_user.id))
    if existing is not None:
        return AttributionResult(
            Outcome.already_attributed,
            attribution_id=existing.id,
            referrer_id=existing.member_id,
            program_id=existing.program_id,
            campaign_id=existing.campaign_id,
            click_id=existing.click_id,
            via=AttributionVia(existing.via),
        )

    candidate: _Candidate | None = None
    reasons: list[str] = []
    if click_id is not None:
        candidate, why = await _click_candidate(session, rt, click_id, at)
        if why:
            reasons.append(why)
    if candidate is None and referral_code:
        resolved = await resolve_code(session, referral_code)
        if resolved is None:
            reasons.append("unknown referral code")
        else:
            candidate = _Candidate(resolved.member_id, AttributionVia.code, resolved.code)
    if candidate is None:
        if device_id:
            await remember_device(session, rt, new_user.id, device_id)
        return AttributionResult(Outcome.no_referrer, "; ".join(reasons) or "no referral code or click id")

    try:
        referrer = await member_facts(session, candidate.referrer_id)
    except NotFound:
        return AttributionResult(Outcome.no_referrer, "the referrer's account is closed")
    seen = bool(device_id) and await device_seen_on(session, rt, referrer.id, device_id or "")
    refusal = self_referral_reason(referrer, new_user, device_on_referrer=seen)
    if refusal is not None:
        log.warning(
            "self_referral_refused",
            referee_id=str(new_user.id),
            referrer_id=str(referrer.id),
            rule=refusal.value,
            via=candidate.via.value,
        )
        return AttributionResult(Outcome.self_referral, refusal.value, referrer_id=referrer.id)

    campaign = (
        await choose_campaign(session, candidate.program_id, referrer, at) if candidate.program_id else None
    )
    row = Attribution(
        referee_id=new_user.id,
        member_id=referrer.id,
        program_id=candidate.program_id,
        campaign_id=campaign.id if campaign else None,
        click_id=candidate.click_id,
        via=candidate.via.value,
        code=candidate.code,
        attributed_at=at,
    )
    session.add(row)
    await session.flush()
    if device_id:
        await remember_device(session, rt, new_user.id, device_id)
    await enqueue(
        session,
        ATTRIBUTED_TOPIC,
        {
            "attribution_id": str(row.id),
            "referee_id": str(new_user.id),
            "referrer_id": str(referrer.id),
            "program_id": str(row.program_id) if row.program_id else None,
            "campaign_id": str(row.campaign_id) if row.campaign_id else None,
            "click_id": str(row.click_id) if row.click_id else None,
            "via": row.via,
            "attributed_at": at.isoformat(),
        },
    )
    return AttributionResult(
        Outcome.attributed,
        attribution_id=row.id,
        referrer_id=referrer.id,
        program_id=row.program_id,
        campaign_id=row.campaign_id,
        click_id=row.click_id,
        via=candidate.via,
    )
