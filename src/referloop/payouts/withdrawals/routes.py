"""Member routes: ask for a withdrawal, follow it, cancel it while it has not gone to the provider."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.responses import JSONResponse

from referloop.core.deps import ContextDep, ReadSession, RuntimeDep, WriteSession
from referloop.core.errors import problem_responses
from referloop.core.idempotency import (
    idempotency_key_header,
    member_scope,
    request_fingerprint,
    run_idempotent,
)
from referloop.core.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page
from referloop.core.validation import Instant
from referloop.identity.deps import CurrentMember
from referloop.payouts.withdrawals.models import WithdrawalState
from referloop.payouts.withdrawals.schemas import CancelBody, WithdrawalCreate, WithdrawalOut
from referloop.payouts.withdrawals.service import policy, queries, requests

router = APIRouter(prefix="/v1/withdrawals", tags=["withdrawals"], responses=problem_responses(401))

Cursor = Annotated[str | None, Query(max_length=200)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WithdrawalOut,
    responses=problem_responses(403, 404, 409, 422),
)
async def create_withdrawal(
    body: WithdrawalCreate,
    request: Request,
    principal: CurrentMember,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
    idempotency_key: Annotated[str, Depends(idempotency_key_header)],
) -> JSONResponse:
    """Withdraw `amount` (minor units) of your available balance to one of your payout methods. The
    amount is held at once; small withdrawals are approved automatically, larger ones by our finance
    team. Refused with 422 when your balance or limits don't allow it (`insufficient_funds`,
    `withdrawal_below_minimum`, `daily_withdrawal_limit`...), 403 `kyc_required` above the KYC
    threshold, 409 `payout_method_cooling_down` within 24 hours of adding or changing the method."""

    async def handler() -> tuple[int, WithdrawalOut]:
        withdrawal = await requests.create_withdrawal(
            session, rt, principal.user_id, body, ctx, member_locked=True
        )
        return 201, WithdrawalOut.of(withdrawal)

    # The member's withdrawal lock is taken in the statement that claims the key: one round trip.
    return await run_idempotent(
        session,
        scope=member_scope("withdrawals", principal.user_id),
        key=idempotency_key,
        fingerprint=request_fingerprint(request, body),
        handler=handler,
        lock=policy.member_lock_key(principal.user_id),
    )


@router.get("", response_model=Page[WithdrawalOut], responses=problem_responses(422))
async def list_withdrawals(
    principal: CurrentMember,
    session: ReadSession,
    state: WithdrawalState | None = None,
    currency: Annotated[str | None, Query(pattern=r"^[A-Z]{3}$")] = None,
    created_from: Annotated[Instant | None, Query(description="Created at or after (RFC 3339)")] = None,
    created_to: Annotated[Instant | None, Query(description="Created before (RFC 3339)")] = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[WithdrawalOut]:
    """Your withdrawals, newest first."""
    rows, next_cursor = await queries.list_withdrawals(
        session,
        member_id=principal.user_id,
        state=state,
        currency=currency,
        created_from=created_from,
        created_to=created_to,
        cursor=cursor,
        limit=limit,
    )
    return Page[WithdrawalOut](items=[WithdrawalOut.of(w) for w in rows], next_cursor=next_cursor)


@router.get("/{withdrawal_id}", response_model=WithdrawalOut, responses=problem_responses(404))
async def get_withdrawal(
    withdrawal_id: uuid.UUID, principal: CurrentMember, session: ReadSession
) -> WithdrawalOut:
    return WithdrawalOut.of(await queries.get_for_member(session, principal.user_id, withdrawal_id))


@router.post(
    "/{withdrawal_id}/cancel", response_model=WithdrawalOut, responses=problem_responses(404, 409, 422)
)
async def cancel_withdrawal(
    withdrawal_id: uuid.UUID,
    principal: CurrentMember,
    session: WriteSession,
    ctx: ContextDep,
    body: CancelBody | None = None,
) -> WithdrawalOut:
    """Cancel a withdrawal that is `requested` or `approved`; the held amount is available again at
    once. Cancelling a cancelled withdrawal answers the same; any other state is 409, naming the
    states it can move to."""
    withdrawal = await requests.cancel_withdrawal(
        session, principal.user_id, withdrawal_id, body.reason if body else None, ctx
    )
    return WithdrawalOut.of(withdrawal)
