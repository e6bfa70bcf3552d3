from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.responses import JSONResponse

from referloop.core.db import utcnow
from referloop.core.deps import ContextDep, ReadSession, WriteSession
from referloop.core.errors import problem_responses
from referloop.core.idempotency import (
    idempotency_key_header,
    run_idempotent_for,
)
from referloop.core.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page
from referloop.disputes import service
from referloop.disputes.models import Dispute, DisputeMessage, DisputeState, SubjectType
from referloop.disputes.schemas import (
    Assign,
    DisputeCreate,
    DisputeDetail,
    DisputeOut,
    MessageCreate,
    MessageOut,
    Money,
    Resolve,
    StaffDisputeDetail,
    StaffDisputeOut,
    StaffMessageCreate,
)
from referloop.identity.deps import CurrentMember, SupportStaff
from referloop.identity.models import Role

router = APIRouter(prefix="/v1/disputes", tags=["disputes"], responses=problem_responses(401))
staff_router = APIRouter(
    prefix="/v1/staff/disputes", tags=["staff: disputes"], responses=problem_responses(401, 403)
)

Cursor = Annotated[str | None, Query(max_length=200)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]


def _message(m: DisputeMessage) -> MessageOut:
    return MessageOut(
        id=m.id,
        author_role=m.author_role,
        from_staff=m.author_role != Role.member.value,
        body=m.body,
        internal=m.internal,
        created_at=m.created_at,
    )


def _fields(d: Dispute) -> dict[str, object]:
    adjustment = (
        Money(amount=d.adjustment_amount, currency=d.adjustment_currency)
        if d.adjustment_amount is not None and d.adjustment_currency
        else None
    )
    return {
        c: getattr(d, c)
        for c in (
            "id",
            "subject_type",
            "subject_id",
            "title",
            "state",
            "outcome",
            "resolution_note",
            "first_response_due_at",
            "resolution_due_at",
            "first_response_at",
            "resolved_at",
            "created_at",
            "last_message_at",
        )
    } | {"adjustment": adjustment}


def _member_detail(d: Dispute, messages: Sequence[DisputeMessage]) -> DisputeDetail:
    return DisputeDetail.model_validate({**_fields(d), "messages": [_message(m) for m in messages]})


def _staff_fields(d: Dispute) -> dict[str, object]:
    return {
        **_fields(d),
        "member_id": d.member_id,
        "assignee_id": d.assignee_id,
        "overdue": service.is_overdue(d, utcnow()),
    }


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DisputeDetail,
    responses=problem_responses(404, 409, 422),
)
async def open_dispute(
    body: DisputeCreate,
    request: Request,
    principal: CurrentMember,
    session: WriteSession,
    ctx: ContextDep,
    idempotency_key: Annotated[str, Depends(idempotency_key_header)],
) -> JSONResponse:
    """Open a dispute about one of your referrals, transactions or withdrawals (or `other`).
    Support answers within 24 hours and resolves within 7 days."""

    async def handler() -> tuple[int, DisputeDetail]:
        dispute, messages = await service.open_dispute(
            session, principal.user_id, body, ctx, member_locked=True
        )
        return 201, _member_detail(dispute, messages)

    # The member's dispute lock is taken in the statement that claims the key: one round trip.
    return await run_idempotent_for(
        session,
        request,
        principal.user_id,
        "disputes",
        idempotency_key,
        body,
        handler,
        lock=service.member_lock_key(principal.user_id),
    )


@router.get("", response_model=Page[DisputeOut], responses=problem_responses(422))
async def list_disputes(
    principal: CurrentMember,
    session: ReadSession,
    state: DisputeState | None = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[DisputeOut]:
    rows, next_cursor = await service.list_for_member(
        session, principal.user_id, state=state, cursor=cursor, limit=limit
    )
    return Page[DisputeOut](
        items=[DisputeOut.model_validate(_fields(d)) for d in rows], next_cursor=next_cursor
    )


@router.get("/{dispute_id}", response_model=DisputeDetail, responses=problem_responses(404))
async def get_dispute(dispute_id: uuid.UUID, principal: CurrentMember, session: ReadSession) -> DisputeDetail:
    return _member_detail(*await service.get_for_member(session, principal.user_id, dispute_id))


@router.post(
    "/{dispute_id}/messages",
    status_code=status.HTTP_201_CREATED,
    response_model=MessageOut,
    responses=problem_responses(404, 409, 422),
)
async def add_message(
    dispute_id: uuid.UUID,
    body: MessageCreate,
    request: Request,
    principal: CurrentMember,
    session: WriteSession,
    ctx: ContextDep,
    idempotency_key: Annotated[str, Depends(idempotency_key_header)],
) -> JSONResponse:
    """Add a message to your dispute; a retry with the same Idempotency-Key posts it once. A dispute
    takes up to 200 of your messages (then 409 `dispute_thread_full`)."""

    async def handler() -> tuple[int, MessageOut]:
        return 201, _message(
            await service.member_reply(session, principal.user_id, dispute_id, body.body, ctx)
        )

    return await run_idempotent_for(
        session, request, principal.user_id, "dispute_messages", idempotency_key, body, handler
    )


@router.post("/{dispute_id}/withdraw", response_model=DisputeDetail, responses=problem_responses(404, 409))
async def withdraw_dispute(
    dispute_id: uuid.UUID, principal: CurrentMember, session: WriteSession, ctx: ContextDep
) -> DisputeDetail:
    """Close your own dispute (nothing to resolve any more)."""
    dispute = await service.withdraw(session, principal.user_id, dispute_id, ctx)
    return _member_detail(dispute, await service.messages_of(session, dispute.id, include_internal=False))


@staff_router.get("", response_model=Page[StaffDisputeOut], responses=problem_responses(422))
async def staff_list(
    _: SupportStaff,
    session: ReadSession,
    state: DisputeState | None = None,
    assignee_id: uuid.UUID | None = None,
    unassigned: bool = False,
    member_id: uuid.UUID | None = None,
    subject_type: SubjectType | None = None,
    overdue: Annotated[bool, Query(description="Only those past an SLA deadline")] = False,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[StaffDisputeOut]:
    rows, next_cursor = await service.list_for_staff(
        session,
        state=state,
        assignee_id=assignee_id,
        unassigned=unassigned,
        member_id=member_id,
        subject_type=subject_type,
        overdue=overdue,
        cursor=cursor,
        limit=limit,
    )
    return Page[StaffDisputeOut](
        items=[StaffDisputeOut.model_validate(_staff_fields(d)) for d in rows], next_cursor=next_cursor
    )


@staff_router.get("/{dispute_id}", response_model=StaffDisputeDetail, responses=problem_responses(404))
async def staff_get(dispute_id: uuid.UUID, _: SupportStaff, session: ReadSession) -> StaffDisputeDetail:
    dispute, messages = await service.get_for_staff(session, dispute_id)
    return StaffDisputeDetail.model_validate(
        {**_staff_fields(dispute), "messages": [_message(m) for m in messages]}
    )


@staff_router.put(
    "/{dispute_id}/assignee", response_model=StaffDisputeOut, responses=problem_responses(404, 422)
)
async def staff_assign(
    dispute_id: uuid.UUID, body: Assign, actor: SupportStaff, session: WriteSession, ctx: ContextDep
) -> StaffDisputeOut:
    return StaffDisputeOut.model_validate(
        _staff_fields(await service.assign(session, actor, dispute_id, body.assignee_id, ctx))
    )


@staff_router.post(
    "/{dispute_id}/messages",
    status_code=status.HTTP_201_CREATED,
    response_model=MessageOut,
    responses=problem_responses(404, 409, 422),
)
async def staff_message(
    dispute_id: uuid.UUID,
    body: StaffMessageCreate,
    request: Request,
    actor: SupportStaff,
    session: WriteSession,
    ctx: ContextDep,
    idempotency_key: Annotated[str, Depends(idempotency_key_header)],
) -> JSONResponse:
    """Reply to the member (starts the first-response clock) or add an internal note."""

    async def handler() -> tuple[int, MessageOut]:
        return 201, _message(
            await service.staff_reply(session, actor, dispute_id, body.body, body.internal, ctx)
        )

    return await run_idempotent_for(
        session, request, actor.user_id, "staff_dispute_messages", idempotency_key, body, handler
    )


@staff_router.post(
    "/{dispute_id}/resolve", response_model=StaffDisputeOut, responses=problem_responses(404, 409, 422)
)
async def staff_resolve(
    dispute_id: uuid.UUID,
    body: Resolve,
    request: Request,
    actor: SupportStaff,
    session: WriteSession,
    ctx: ContextDep,
    idempotency_key: Annotated[str, Depends(idempotency_key_header)],
) -> JSONResponse:
    """Resolve with an outcome; an `adjustment` (finance or admin only) is posted to the member's
    wallet through the ledger in the same transaction. A retry with the same Idempotency-Key gets
    the first answer."""

    async def handler() -> tuple[int, StaffDisputeOut]:
        resolved = await service.resolve(session, actor, dispute_id, body, ctx)
        return 200, StaffDisputeOut.model_validate(_staff_fields(resolved))

    return await run_idempotent_for(
        session, request, actor.user_id, "dispute_resolutions", idempotency_key, body, handler
    )
