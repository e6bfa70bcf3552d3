"""Staff routes (support, admin): search referrals, see one with its timeline, place or lift a fraud
hold. Holds are audited with the staff member and their reason."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.context import RequestContext
from referloop.core.deps import ContextDep, ReadSession, WriteSession
from referloop.core.errors import problem_responses
from referloop.core.idempotency import (
    idempotency_key_header,
    member_scope,
    request_fingerprint,
    run_idempotent,
)
from referloop.core.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page
from referloop.identity.deps import require_staff
from referloop.identity.models import Role
from referloop.identity.service.sessions import Principal
from referloop.referrals.lifecycle.models import ReferralState
from referloop.referrals.lifecycle.schemas import FraudHoldRequest, StaffReferralDetail, StaffReferralOut
from referloop.referrals.lifecycle.service import queries, staff

router = APIRouter(
    prefix="/v1/staff/referrals", tags=["staff: referrals"], responses=problem_responses(401, 403)
)

ReferralStaff = Annotated[Principal, Depends(require_staff(Role.support))]
IdempotencyKey = Annotated[str, Depends(idempotency_key_header)]
Cursor = Annotated[str | None, Query(max_length=300, pattern=r"^[A-Za-z0-9_-]+$")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]


async def _detail(session: AsyncSession, referral_id: uuid.UUID) -> StaffReferralDetail:
    row = await queries.get_referral(session, referral_id, member_id=None)
    return StaffReferralDetail(
        **queries.staff_referral_out(row).model_dump(),
        timeline=await queries.timeline(session, referral_id, for_staff=True),
        rewards=await queries.rewards_of(session, referral_id, member_id=None),
    )


@router.get("", response_model=Page[StaffReferralOut], responses=problem_responses(422))
async def search_referrals(
    _: ReferralStaff,
    session: ReadSession,
    member_id: Annotated[uuid.UUID | None, Query(description="The referrer")] = None,
    program_id: uuid.UUID | None = None,
    university_id: uuid.UUID | None = None,
    state: ReferralState | None = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[StaffReferralOut]:
    filters = queries.ReferralFilters(
        member_id=member_id, program_id=program_id, university_id=university_id, state=state
    )
    rows, next_cursor = await queries.list_referrals(session, filters, cursor=cursor, limit=limit)
    return Page[StaffReferralOut](
        items=[queries.staff_referral_out(r) for r in rows], next_cursor=next_cursor
    )


@router.get("/{referral_id}", response_model=StaffReferralDetail, responses=problem_responses(404, 422))
async def get_referral(referral_id: uuid.UUID, _: ReferralStaff, session: ReadSession) -> StaffReferralDetail:
    return await _detail(session, referral_id)


async def _hold_action(
    session: AsyncSession,
    request: Request,
    actor: Principal,
    key: str,
    body: FraudHoldRequest,
    referral_id: uuid.UUID,
    action: Callable[[AsyncSession, Principal, uuid.UUID, str, RequestContext], Awaitable[object]],
    ctx: RequestContext,
) -> JSONResponse:
    """A retried hold or lift (same Idempotency-Key and body) answers the first result, not a 409."""

    async def handler() -> tuple[int, StaffReferralDetail]:
        await action(session, actor, referral_id, body.reason, ctx)
        return 200, await _detail(session, referral_id)

    return await run_idempotent(
        session,
        scope=member_scope("referrals.fraud_hold", actor.user_id),
        key=key,
        fingerprint=request_fingerprint(request, body),
        handler=handler,
    )


@router.post(
    "/{referral_id}/fraud-hold",
    response_model=StaffReferralDetail,
    responses=problem_responses(404, 409, 422),
)
async def place_fraud_hold(
    referral_id: uuid.UUID,
    body: FraudHoldRequest,
    request: Request,
    actor: ReferralStaff,
    session: WriteSession,
    ctx: ContextDep,
    idempotency_key: IdempotencyKey,
) -> JSONResponse:
    """Freeze a referral: no reward is granted or released while it is held. Partner reports still
    move the state underneath. 409 (naming what is allowed) for a referral that is closed or held."""
    return await _hold_action(
        session, request, actor, idempotency_key, body, referral_id, staff.place_fraud_hold, ctx
    )


@router.post(
    "/{referral_id}/fraud-hold/lift",
    response_model=StaffReferralDetail,
    responses=problem_responses(404, 409, 422),
)
async def lift_fraud_hold(
    referral_id: uuid.UUID,
    body: FraudHoldRequest,
    request: Request,
    actor: ReferralStaff,
    session: WriteSession,
    ctx: ContextDep,
    idempotency_key: IdempotencyKey,
) -> JSONResponse:
    """Return a held referral to the state it was in (or has since reached through partner reports)."""
    return await _hold_action(
        session, request, actor, idempotency_key, body, referral_id, staff.lift_fraud_hold, ctx
    )
