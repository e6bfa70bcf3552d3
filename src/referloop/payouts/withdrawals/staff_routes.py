"""Finance staff routes (finance and admin roles, TOTP sessions): review and settle withdrawals."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from referloop.config import PayoutProviderName
from referloop.core.deps import ContextDep, ReadSession, RuntimeDep, WriteSession
from referloop.core.errors import problem_responses
from referloop.core.idempotency import idempotency_key_header, request_fingerprint, run_idempotent
from referloop.core.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page
from referloop.core.validation import Instant
from referloop.identity.deps import FinanceStaff
from referloop.payouts.withdrawals.models import WithdrawalState
from referloop.payouts.withdrawals.schemas import (
    MarkFailedBody,
    MarkPaidBody,
    RejectBody,
    RetryBody,
    StaffWithdrawalOut,
)
from referloop.payouts.withdrawals.service import queries, staff
from referloop.payouts.withdrawals.service.transitions import Actor

router = APIRouter(
    prefix="/v1/staff/withdrawals", tags=["staff: withdrawals"], responses=problem_responses(401, 403)
)

Cursor = Annotated[str | None, Query(max_length=200)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]


@router.get("", response_model=Page[StaffWithdrawalOut], responses=problem_responses(422))
async def staff_list(
    _: FinanceStaff,
    session: ReadSession,
    state: WithdrawalState | None = None,
    member_id: uuid.UUID | None = None,
    provider: PayoutProviderName | None = None,
    currency: Annotated[str | None, Query(pattern=r"^[A-Z]{3}$")] = None,
    created_from: Annotated[Instant | None, Query(description="Created at or after (RFC 3339)")] = None,
    created_to: Annotated[Instant | None, Query(description="Created before (RFC 3339)")] = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[StaffWithdrawalOut]:
    """Every member's withdrawals, newest first; `state=requested` is the approval queue."""
    rows, next_cursor = await queries.list_withdrawals(
        session,
        member_id=member_id,
        state=state,
        provider=provider.value if provider else None,
        currency=currency,
        created_from=created_from,
        created_to=created_to,
        cursor=cursor,
        limit=limit,
    )
    return Page[StaffWithdrawalOut](items=[StaffWithdrawalOut.of(w) for w in rows], next_cursor=next_cursor)


@router.get("/{withdrawal_id}", response_model=StaffWithdrawalOut, responses=problem_responses(404))
async def staff_get(withdrawal_id: uuid.UUID, _: FinanceStaff, session: ReadSession) -> StaffWithdrawalOut:
    return StaffWithdrawalOut.of(await queries.get(session, withdrawal_id))


@router.post(
    "/{withdrawal_id}/approve", response_model=StaffWithdrawalOut, responses=problem_responses(404, 409)
)
async def staff_approve(
    withdrawal_id: uuid.UUID, actor: FinanceStaff, session: WriteSession, ctx: ContextDep
) -> StaffWithdrawalOut:
    """Approve a requested withdrawal: the worker sends it to the payout provider."""
    return StaffWithdrawalOut.of(
        await staff.approve(session, withdrawal_id, Actor(actor.user_id, "staff", ctx))
    )


@router.post(
    "/{withdrawal_id}/reject", response_model=StaffWithdrawalOut, responses=problem_responses(404, 409, 422)
)
async def staff_reject(
    withdrawal_id: uuid.UUID, body: RejectBody, actor: FinanceStaff, session: WriteSession, ctx: ContextDep
) -> StaffWithdrawalOut:
    """Refuse a requested or approved withdrawal, with a reason the member sees; the amount is
    released to their available balance."""
    return StaffWithdrawalOut.of(
        await staff.reject(session, withdrawal_id, body.reason, Actor(actor.user_id, "staff", ctx))
    )


@router.post(
    "/{withdrawal_id}/mark-paid",
    response_model=StaffWithdrawalOut,
    responses=problem_responses(404, 409, 422),
)
async def staff_mark_paid(
    withdrawal_id: uuid.UUID,
    body: MarkPaidBody,
    actor: FinanceStaff,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
) -> StaffWithdrawalOut:
    """Manual provider: you paid it by hand; record the bank's reference (UTR...)."""
    return StaffWithdrawalOut.of(
        await staff.mark_paid(session, rt, withdrawal_id, body.reference, Actor(actor.user_id, "staff", ctx))
    )


@router.post(
    "/{withdrawal_id}/mark-failed",
    response_model=StaffWithdrawalOut,
    responses=problem_responses(404, 409, 422),
)
async def staff_mark_failed(
    withdrawal_id: uuid.UUID,
    body: MarkFailedBody,
    actor: FinanceStaff,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
) -> StaffWithdrawalOut:
    """Manual provider: the payment could not be made; the amount goes back to the member."""
    return StaffWithdrawalOut.of(
        await staff.mark_failed(session, rt, withdrawal_id, body.reason, Actor(actor.user_id, "staff", ctx))
    )


@router.post(
    "/{withdrawal_id}/retry", response_model=StaffWithdrawalOut, responses=problem_responses(404, 409, 422)
)
async def staff_retry(
    withdrawal_id: uuid.UUID,
    request: Request,
    actor: FinanceStaff,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
    idempotency_key: Annotated[str, Depends(idempotency_key_header)],
    body: RetryBody | None = None,
) -> JSONResponse:
    """Send a failed withdrawal again (a new attempt, with a new provider key): the amount is held
    again, so this is refused (422) if the member's balance no longer covers it, or if it no longer
    fits the member's daily or monthly limit (`daily_withdrawal_limit`...; requests made since may
    have used them) unless `override_limits` is true, which the audit log records."""
    override = body is not None and body.override_limits

    async def handler() -> tuple[int, StaffWithdrawalOut]:
        w = await staff.retry(
            session, rt, withdrawal_id, Actor(actor.user_id, "staff", ctx), override_limits=override
        )
        return 200, StaffWithdrawalOut.of(w)

    return await run_idempotent(
        session,
        scope=f"withdrawal_retry:{actor.user_id}",
        key=idempotency_key,
        fingerprint=request_fingerprint(request, body),
        handler=handler,
    )
