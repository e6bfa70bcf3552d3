"""Member routes: invite a lead, list your referrals, one referral's timeline, your stats."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.responses import JSONResponse

from referloop.analytics.service.funnel import Granularity
from referloop.core.deps import ContextDep, ReadSession, RuntimeDep, WriteSession
from referloop.core.errors import problem_responses
from referloop.core.idempotency import (
    idempotency_key_header,
    member_scope,
    request_fingerprint,
    run_idempotent,
)
from referloop.core.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page
from referloop.core.validation import AwareInstant
from referloop.identity.deps import CurrentMember
from referloop.referrals.lifecycle.models import ReferralState
from referloop.referrals.lifecycle.schemas import InviteRequest, ReferralDetail, ReferralOut, ReferralStats
from referloop.referrals.lifecycle.service import invites, queries

router = APIRouter(prefix="/v1/referrals", tags=["referrals: lifecycle"], responses=problem_responses(401))

Cursor = Annotated[str | None, Query(max_length=300, pattern=r"^[A-Za-z0-9_-]+$")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
IdempotencyKey = Annotated[str, Depends(idempotency_key_header)]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ReferralOut,
    responses=problem_responses(404, 409, 422, 429),
)
async def invite(
    body: InviteRequest,
    request: Request,
    principal: CurrentMember,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
    idempotency_key: IdempotencyKey,
) -> JSONResponse:
    """Invite someone to a program: they get an email with your share link. They appear in your
    list as first name and initial. Inviting the same person to the same program again within the
    attribution window answers 409; inviting yourself, 422."""

    async def handler() -> tuple[int, ReferralOut]:
        await rt.limiter.hit(
            rt.settings.rate_limit_referral_invite, "referral-invite", str(principal.user_id)
        )
        referral = await invites.invite(session, rt, principal.user_id, body, ctx)
        row = await queries.get_referral(session, referral.id, member_id=principal.user_id)
        return 201, queries.referral_out(row)

    return await run_idempotent(
        session,
        scope=member_scope("referrals.invite", principal.user_id),
        key=idempotency_key,
        fingerprint=request_fingerprint(request, body),
        handler=handler,
    )


@router.get("", response_model=Page[ReferralOut], responses=problem_responses(422))
async def list_referrals(
    principal: CurrentMember,
    session: ReadSession,
    state: ReferralState | None = None,
    program_id: uuid.UUID | None = None,
    since: Annotated[
        AwareInstant | None, Query(description="Made at or after (RFC 3339, with a time zone)")
    ] = None,
    until: Annotated[
        AwareInstant | None, Query(description="Made before (RFC 3339, with a time zone)")
    ] = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[ReferralOut]:
    """Your referrals, newest first."""
    filters = queries.ReferralFilters(
        state=state,
        program_id=program_id,
        since=since,
        until=until,
        member_id=principal.user_id,
    )
    rows, next_cursor = await queries.list_referrals(session, filters, cursor=cursor, limit=limit)
    return Page[ReferralOut](items=[queries.referral_out(r) for r in rows], next_cursor=next_cursor)


@router.get("/stats", response_model=ReferralStats, responses=problem_responses(422))
async def referral_stats(
    principal: CurrentMember,
    session: ReadSession,
    program_id: Annotated[uuid.UUID | None, Query(description="The funnel of one program.")] = None,
    campaign_id: Annotated[uuid.UUID | None, Query(description="The funnel of one campaign.")] = None,
    date_from: Annotated[
        date | None, Query(alias="from", description="First UTC day (default: 29 days before `to`).")
    ] = None,
    date_to: Annotated[date | None, Query(alias="to", description="Last UTC day (default: today).")] = None,
    granularity: Granularity = Granularity.day,
) -> ReferralStats:
    """Your referrals by state, how many enrolled, your wallet's pending and available money (all
    time), and your own funnel: clicks on your links -> sign-ups -> applications -> enrolments ->
    rewarded, per UTC day or ISO week, with conversion rates and median times between steps, filtered
    like the staff funnel (program, campaign, date range; at most 366 days or 105 weeks)."""
    return await queries.stats(
        session,
        principal.user_id,
        queries.FunnelQuery(
            program_id=program_id,
            campaign_id=campaign_id,
            date_from=date_from,
            date_to=date_to,
            granularity=granularity,
        ),
    )


@router.get("/{referral_id}", response_model=ReferralDetail, responses=problem_responses(404, 422))
async def get_referral(
    referral_id: uuid.UUID, principal: CurrentMember, session: ReadSession
) -> ReferralDetail:
    """One of your referrals with its timeline and your rewards for it (a reward the campaign could
    not pay says why)."""
    row = await queries.get_referral(session, referral_id, member_id=principal.user_id)
    return ReferralDetail(
        **queries.referral_out(row).model_dump(),
        timeline=await queries.timeline(session, referral_id, for_staff=False),
        rewards=await queries.rewards_of(session, referral_id, member_id=principal.user_id),
    )
