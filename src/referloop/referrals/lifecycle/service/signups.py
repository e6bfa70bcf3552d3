"""An attributed sign-up (`referrals.signup_attributed`) becomes a referral in state signed_up.

The referrer's referrals of this person that have no referee yet get the new member as referee:
their invitations (matched by the blind index of their canonical email or of their phone) and the
referral a partner's report made from the sign-up's click. An invitation still invited moves to
signed_up; one the partner has already moved further (applied, enrolled, rewarded; a live one)
keeps its state, with the sign-up noted in its history (no milestone is queued again). If none of
them is for the program the sign-up came through (or the sign-up came through a plain code and
matched none), a referral is created in signed_up. Invitations of the same person by other members
stay as they are and expire: the attribution (last click wins) decided the referrer.

Idempotent: the consumer framework handles an event once, and a replay finds the referrals this
sign-up already made or advanced (same referrer and referee) and adds nothing."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.db import utcnow
from referloop.core.errors import NotFound
from referloop.identity.service.accounts import get_user
from referloop.referrals.lifecycle.models import Referral, ReferralSource, ReferralState
from referloop.referrals.lifecycle.service import states
from referloop.referrals.lifecycle.service.leads import (
    email_index,
    email_indexes,
    masked_name,
    phone_index,
    phone_indexes,
)
from referloop.referrals.lifecycle.service.outcomes import lock_click
from referloop.referrals.service.catalogue import get_program
from referloop.runtime import Runtime

_LIVE = [
    s.value
    for s in (ReferralState.invited, ReferralState.applied, ReferralState.enrolled, ReferralState.rewarded)
]


def _underlying_in(values: list[str]) -> ColumnElement[bool]:
    """The state, or under a fraud hold the state it keeps, is one of `values`."""
    return or_(
        Referral.state.in_(values),
        and_(Referral.state == ReferralState.fraud_hold.value, Referral.held_from_state.in_(values)),
    )


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


async def on_signup_attributed(
    session: AsyncSession, rt: Runtime, payload: dict[str, Any]
) -> list[uuid.UUID]:
    """Returns the ids of the referrals now in signed_up for this sign-up."""
    referee_id, referrer_id = _uuid(payload.get("referee_id")), _uuid(payload.get("referrer_id"))
    attribution_id = _uuid(payload.get("attribution_id"))
    if referee_id is None or referrer_id is None or referee_id == referrer_id:
        return []
    try:
        referee = await get_user(session, referee_id)
    except NotFound:
        return []  # closed before the event was handled
    program_id, click_id = _uuid(payload.get("program_id")), _uuid(payload.get("click_id"))
    try:
        at = datetime.fromisoformat(str(payload.get("attributed_at")))
    except ValueError:
        at = utcnow()
    via = "a share link" if payload.get("via") == "click" else "a referral code"
    ei = email_index(rt, referee.email) if referee.email else None
    pi = phone_index(rt, referee.phone) if referee.phone else None

    # What an earlier delivery of this sign-up already did (a replay then adds nothing).
    prior = (
        await session.execute(
            select(Referral.id, Referral.program_id).where(
                Referral.referee_id == referee.id, Referral.member_id == referrer_id
            )
        )
    ).all()
    done: list[uuid.UUID] = [r.id for r in prior]
    covered: set[uuid.UUID | None] = {r.program_id for r in prior}
    same_person = [
        c
        for c in (
            Referral.email_index.in_(email_indexes(rt, referee.email)) if referee.email else None,
            Referral.phone_index.in_(phone_indexes(rt, referee.phone)) if referee.phone else None,
        )
        if c is not None
    ]
    theirs = []
    if same_person:
        theirs.append(and_(or_(*same_person), _underlying_in(_LIVE)))
    if click_id is not None:
        # A partner may have reported this click's application already (a referral with no referee):
        # the one lock a report naming this click takes too, so the two never make one each.
        await lock_click(session, click_id)
        theirs.append(and_(Referral.click_id == click_id, _underlying_in(_LIVE)))
    if theirs:
        taken = list(
            await session.scalars(
                select(Referral)
                .where(Referral.member_id == referrer_id, Referral.referee_id.is_(None), or_(*theirs))
                .order_by(Referral.id)
                .with_for_update()
            )
        )
        for referral in taken:
            referral.referee_id = referee.id
            referral.attribution_id = attribution_id
            referral.click_id = click_id or referral.click_id
            referral.email_index = referral.email_index or ei
            referral.phone_index = referral.phone_index or pi
            if referral.source == ReferralSource.click.value:  # made from a report: "An applicant"
                referral.referee_label = masked_name(referee.display_name)
                referral.locale = referee.locale
            if states.underlying_state(referral) is ReferralState.invited:
                await states.transition(
                    session,
                    referral,
                    ReferralState.signed_up,
                    actor=states.SYSTEM,
                    reason=f"signed up through {via}",
                    at=at,
                )
            else:
                # Further along already (the partner reported the application first): never moved
                # back; the history notes the sign-up, and the sign-up's own rewards (and the new
                # referee's of the milestones already reached) are queued, once per milestone and role.
                referral.signed_up_at = referral.signed_up_at or at
                await session.flush()
                await states.note(
                    session, referral, actor=states.SYSTEM, reason=f"signed up through {via}", at=at
                )
                await states.queue_reached_milestones(session, referral)
            done.append(referral.id)
        covered |= {r.program_id for r in taken}

    if (program_id is not None and program_id not in covered) or (program_id is None and not done):
        university_id = None
        if program_id is not None:
            program, _ = await get_program(session, program_id, include_retired=True)
            university_id = program.university_id
        now = utcnow()
        referral = Referral(
            member_id=referrer_id,
            referee_id=referee.id,
            program_id=program_id,
            university_id=university_id,
            campaign_id=_uuid(payload.get("campaign_id")),  # chosen by attribution for this program
            campaign_chosen_at=at if program_id else None,
            state=ReferralState.signed_up.value,
            source=ReferralSource.signup.value,
            attribution_id=attribution_id,
            click_id=click_id,
            referee_label=masked_name(referee.display_name),
            email_index=ei,
            phone_index=pi,
            locale=referee.locale,
            signed_up_at=at,
            state_changed_at=now,
            created_at=now,
            updated_at=now,
        )
        session.add(referral)
        await session.flush()
        await states.record_created(
            session, referral, actor=states.SYSTEM, reason=f"signed up through {via}", ctx=None, at=at
        )
        done.append(referral.id)
    return done
