"""A member invites a lead (someone not registered yet) to a program; the invitation goes by email.

The same lead (same canonical email or phone) for the same program is refused (409) while an
earlier invitation or referral of them for that program is younger than the attribution window,
whoever made it; two invitations racing for one lead serialise on an advisory lock per
(program, lead), so exactly one is made. Inviting yourself is refused (422). Nothing is written
when an invitation is refused."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta

from sqlalchemy import or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.context import RequestContext
from referloop.core.db import utcnow
from referloop.identity.service.accounts import get_user
from referloop.notifications.service import send_email
from referloop.referrals.lifecycle.errors import DuplicateLead, SelfReferralRefused
from referloop.referrals.lifecycle.models import ActorType, Referral, ReferralSource, ReferralState
from referloop.referrals.lifecycle.schemas import InviteRequest
from referloop.referrals.lifecycle.service import states
from referloop.referrals.lifecycle.service.leads import email_indexes, phone_indexes, seal_lead
from referloop.referrals.service.campaigns import choose_campaign
from referloop.referrals.service.catalogue import get_public_program
from referloop.referrals.service.codes import link_slug, sharing_code
from referloop.referrals.service.members import MemberFacts, canonical_email
from referloop.runtime import Runtime

INVITE_TEMPLATE = "referral_invite"


def _lock_key(program_id: uuid.UUID, index: bytes) -> int:
    digest = hashlib.sha256(b"referrals.lead:" + program_id.bytes + index).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def invite(
    session: AsyncSession, rt: Runtime, member_id: uuid.UUID, data: InviteRequest, ctx: RequestContext
) -> Referral:
    program, university = await get_public_program(session, data.program_id)
    user = await get_user(session, member_id)
    referrer = MemberFacts.of(user)
    if (data.email and referrer.email and canonical_email(data.email) == canonical_email(referrer.email)) or (
        data.phone and referrer.phone == data.phone
    ):
        raise SelfReferralRefused("You cannot invite yourself.")

    now = utcnow()
    lead = seal_lead(rt, data.name, data.email, data.phone)
    campaign = await choose_campaign(session, program.id, referrer, now)
    window = timedelta(
        days=campaign.attribution_window_days if campaign else rt.settings.referral_attribution_window_days
    )
    indexes = [i for i in (lead.email_index, lead.phone_index) if i is not None]
    for key in sorted(_lock_key(program.id, i) for i in indexes):  # a fixed order: no deadlock
        await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
    matches = [Referral.email_index.in_(email_indexes(rt, data.email))] if data.email else []
    if data.phone:
        matches.append(Referral.phone_index.in_(phone_indexes(rt, data.phone)))
    taken = await session.scalar(
        select(Referral.id)
        .where(
            Referral.program_id == program.id,
            or_(*matches),
            Referral.created_at > now - window,
            Referral.state != ReferralState.expired.value,
        )
        .limit(1)
    )
    if taken is not None:
        raise DuplicateLead("This person was already invited to this program recently.")

    referral = Referral(
        member_id=member_id,
        program_id=program.id,
        university_id=university.id,
        campaign_id=campaign.id if campaign else None,
        campaign_chosen_at=now,
        state=ReferralState.invited.value,
        source=ReferralSource.invite.value,
        referee_label=lead.label,
        lead_name=lead.name,
        lead_email=lead.email,
        lead_phone=lead.phone,
        email_index=lead.email_index,
        phone_index=lead.phone_index,
        locale=user.locale,
        invited_at=now,
        expires_at=now + window,
        state_changed_at=now,
        created_at=now,
        updated_at=now,
    )
    session.add(referral)
    await session.flush()
    await states.record_created(
        session,
        referral,
        actor=states.Actor(ActorType.member, member_id),
        reason="invited by the referrer",
        ctx=ctx,
    )
    if data.email:
        code = await sharing_code(session, member_id)
        await send_email(
            session,
            rt,
            to=data.email,
            template=INVITE_TEMPLATE,
            locale=user.locale,
            context={
                "lead_name": data.name.split()[0],
                "referrer_name": user.display_name,
                "program_name": program.name,
                "university_name": university.name,
                "link": f"{rt.settings.public_base_url.rstrip('/')}/r/{link_slug(code, program.short_code)}",
                "days": window.days,
            },
        )
    return referral
