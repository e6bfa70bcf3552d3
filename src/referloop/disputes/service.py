"""Disputes: members open them and write; support assigns, replies and resolves (with an adjustment
posted through the ledger, finance role for amounts). SLA clocks: first response and resolution."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.compliance import audit
from referloop.core.context import RequestContext
from referloop.core.db import lock_by_name, utcnow
from referloop.core.errors import Forbidden, InvalidInput, NotFound
from referloop.core.ids import uuid7
from referloop.core.outbox import enqueue
from referloop.core.pagination import paginate_by_id_desc, split_page
from referloop.disputes import subjects
from referloop.disputes.errors import (
    DisputeClosed,
    DisputeThreadFull,
    SubjectNotFound,
    TooManyOpenDisputes,
)
from referloop.disputes.models import Dispute, DisputeMessage, DisputeState, Outcome, SubjectType
from referloop.disputes.schemas import DisputeCreate, Resolve
from referloop.identity.errors import OwnCase, refuse_own_case
from referloop.identity.models import Role
from referloop.identity.service.sessions import Principal

FIRST_RESPONSE_SLA = timedelta(hours=24)
RESOLUTION_SLA = timedelta(days=7)
MAX_OPEN_PER_MEMBER = 20
# A dispute shows its newest messages, oldest first. Members may write this many messages in one
# dispute (staff are never refused), so in practice a thread is shown whole.
MESSAGES_SHOWN = 500
MAX_MEMBER_MESSAGES = 200


def member_lock_key(member_id: uuid.UUID) -> str:
    """The advisory lock (by name) that serialises one member's new disputes, so that requests at
    once cannot all pass the open-dispute limit."""
    return f"disputes:{member_id}"


def _snapshot(d: Dispute) -> dict[str, object]:
    return {
        "state": d.state,
        "assignee_id": str(d.assignee_id) if d.assignee_id else None,
        "outcome": d.outcome,
    }


async def _audit(
    session: AsyncSession,
    dispute: Dispute,
    action: str,
    actor_id: uuid.UUID,
    ctx: RequestContext,
    *,
    before: dict[str, object] | None = None,
    after: dict[str, object] | None = None,
    staff: bool = False,
) -> None:
    """One audit row for a change of `dispute` (its state now, unless `after` says otherwise)."""
    await audit.record(
        session,
        action=action,
        actor_id=actor_id,
        actor_type="staff" if staff else "member",
        target_type="dispute",
        target_id=dispute.id,
        before=before,
        after=after if after is not None else _snapshot(dispute),
        ctx=ctx,
    )


async def open_dispute(
    session: AsyncSession,
    member_id: uuid.UUID,
    data: DisputeCreate,
    ctx: RequestContext,
    *,
    member_locked: bool = False,
) -> tuple[Dispute, list[DisputeMessage]]:
    """`member_locked`: the caller already holds `member_lock_key(member_id)` (POST /v1/disputes
    takes it in the statement that claims its Idempotency-Key)."""
    if not member_locked:
        await lock_by_name(session, member_lock_key(member_id))
    if data.subject_id is not None and not await subjects.member_owns(
        session, data.subject_type, member_id, data.subject_id
    ):
        raise SubjectNotFound(f"You have no {data.subject_type.value} with this id.")
    open_count = await session.scalar(
        select(func.count()).where(
            Dispute.member_id == member_id, Dispute.state != DisputeState.resolved.value
        )
    )
    if (open_count or 0) >= MAX_OPEN_PER_MEMBER:
        raise TooManyOpenDisputes(
            f"You have {MAX_OPEN_PER_MEMBER} open disputes; wait for them to be resolved."
        )
    now = utcnow()
    dispute = Dispute(
        id=uuid7(),
        member_id=member_id,
        subject_type=data.subject_type.value,
        subject_id=data.subject_id,
        title=data.title,
        state=DisputeState.open.value,
        first_response_due_at=now + FIRST_RESPONSE_SLA,
        resolution_due_at=now + RESOLUTION_SLA,
        last_message_at=now,
    )
    session.add(dispute)
    message = DisputeMessage(
        id=uuid7(),
        dispute_id=dispute.id,
        member_id=member_id,
        author_id=member_id,
        author_role=Role.member.value,
        body=data.message,
        created_at=now,
    )
    session.add(message)
    await session.flush()
    await _audit(session, dispute, "dispute.opened", member_id, ctx)
    await enqueue(session, "disputes.opened", {"dispute_id": str(dispute.id), "member_id": str(member_id)})
    return dispute, [message]


async def _get(
    session: AsyncSession, dispute_id: uuid.UUID, *, member_id: uuid.UUID | None = None, lock: bool = False
) -> Dispute:
    stmt = select(Dispute).where(Dispute.id == dispute_id)
    if member_id is not None:
        stmt = stmt.where(Dispute.member_id == member_id)
    dispute = await session.scalar(stmt.with_for_update() if lock else stmt)
    if dispute is None:
        raise NotFound("No such dispute.")
    return dispute


async def messages_of(
    session: AsyncSession, dispute_id: uuid.UUID, *, include_internal: bool
) -> list[DisputeMessage]:
    stmt = select(DisputeMessage).where(DisputeMessage.dispute_id == dispute_id)
    if not include_internal:
        stmt = stmt.where(DisputeMessage.internal.is_(False))
    newest_first = stmt.order_by(DisputeMessage.created_at.desc(), DisputeMessage.id.desc())
    rows = list((await session.scalars(newest_first.limit(MESSAGES_SHOWN))).all())
    rows.reverse()
    return rows


async def get_for_member(
    session: AsyncSession, member_id: uuid.UUID, dispute_id: uuid.UUID
) -> tuple[Dispute, list[DisputeMessage]]:
    dispute = await _get(session, dispute_id, member_id=member_id)
    return dispute, await messages_of(session, dispute.id, include_internal=False)


async def get_for_staff(session: AsyncSession, dispute_id: uuid.UUID) -> tuple[Dispute, list[DisputeMessage]]:
    dispute = await _get(session, dispute_id)
    return dispute, await messages_of(session, dispute.id, include_internal=True)


async def _page(
    session: AsyncSession, stmt: Select[Any], cursor: str | None, limit: int
) -> tuple[Sequence[Dispute], str | None]:
    rows = list((await session.scalars(paginate_by_id_desc(stmt, Dispute.id, cursor, limit))).all())
    return split_page(rows, limit, lambda d: [d.id])


async def list_for_member(
    session: AsyncSession, member_id: uuid.UUID, *, state: DisputeState | None, cursor: str | None, limit: int
) -> tuple[Sequence[Dispute], str | None]:
    stmt = select(Dispute).where(Dispute.member_id == member_id)
    if state:
        stmt = stmt.where(Dispute.state == state.value)
    return await _page(session, stmt, cursor, limit)


async def list_for_staff(
    session: AsyncSession,
    *,
    state: DisputeState | None,
    assignee_id: uuid.UUID | None,
    unassigned: bool,
    member_id: uuid.UUID | None,
    subject_type: SubjectType | None,
    overdue: bool,
    cursor: str | None,
    limit: int,
) -> tuple[Sequence[Dispute], str | None]:
    stmt = select(Dispute)
    if state:
        stmt = stmt.where(Dispute.state == state.value)
    if assignee_id:
        stmt = stmt.where(Dispute.assignee_id == assignee_id)
    if unassigned:
        stmt = stmt.where(Dispute.assignee_id.is_(None))
    if member_id:
        stmt = stmt.where(Dispute.member_id == member_id)
    if subject_type:
        stmt = stmt.where(Dispute.subject_type == subject_type.value)
    if overdue:
        now = utcnow()
        stmt = stmt.where(
            Dispute.state != DisputeState.resolved.value,
            ((Dispute.first_response_at.is_(None)) & (Dispute.first_response_due_at < now))
            | (Dispute.resolution_due_at < now),
        )
    return await _page(session, stmt, cursor, limit)


def is_overdue(d: Dispute, now: datetime) -> bool:
    if d.state == DisputeState.resolved.value:
        return False
    return (d.first_response_at is None and d.first_response_due_at < now) or d.resolution_due_at < now


async def member_reply(
    session: AsyncSession, member_id: uuid.UUID, dispute_id: uuid.UUID, body: str, ctx: RequestContext
) -> DisputeMessage:
    dispute = await _get(session, dispute_id, member_id=member_id, lock=True)
    if dispute.state == DisputeState.resolved.value:
        raise DisputeClosed("This dispute is resolved; open a new one if something is still wrong.")
    written = await session.scalar(
        select(func.count()).where(
            DisputeMessage.dispute_id == dispute.id, DisputeMessage.author_role == Role.member.value
        )
    )
    if (written or 0) >= MAX_MEMBER_MESSAGES:
        raise DisputeThreadFull(
            f"You have written {MAX_MEMBER_MESSAGES} messages in this dispute, its limit; support reads"
            " them all. Open a new dispute for anything else."
        )
    before = _snapshot(dispute)
    now = utcnow()
    message = DisputeMessage(
        id=uuid7(),
        dispute_id=dispute.id,
        member_id=member_id,
        author_id=member_id,
        author_role=Role.member.value,
        body=body,
        created_at=now,
    )
    session.add(message)
    dispute.state = DisputeState.open.value
    dispute.last_message_at = now
    if before["state"] != dispute.state:  # the member answered support: back in support's queue
        await _audit(session, dispute, "dispute.member_replied", member_id, ctx, before=before)
        await enqueue(
            session,
            "disputes.member_replied",
            {"dispute_id": str(dispute.id), "member_id": str(member_id)},
        )
    await session.flush()
    return message


async def staff_reply(
    session: AsyncSession,
    actor: Principal,
    dispute_id: uuid.UUID,
    body: str,
    internal: bool,
    ctx: RequestContext,
) -> DisputeMessage:
    dispute = await _get(session, dispute_id, lock=True)
    # Support's answer (and the first-response clock it stops) comes from someone else.
    refuse_own_case(actor.user_id, dispute.member_id, "answer your own dispute as support")
    if dispute.state == DisputeState.resolved.value:
        raise DisputeClosed("This dispute is resolved.")
    now = utcnow()
    message = DisputeMessage(
        id=uuid7(),
        dispute_id=dispute.id,
        member_id=dispute.member_id,
        author_id=actor.user_id,
        author_role=actor.role,
        body=body,
        internal=internal,
        created_at=now,
    )
    session.add(message)
    if not internal:
        before = _snapshot(dispute)
        dispute.state = DisputeState.awaiting_member.value
        dispute.last_message_at = now
        if dispute.first_response_at is None:
            dispute.first_response_at = now
        await _audit(session, dispute, "dispute.replied", actor.user_id, ctx, before=before, staff=True)
        await enqueue(
            session, "disputes.replied", {"dispute_id": str(dispute.id), "member_id": str(dispute.member_id)}
        )
    await session.flush()
    return message


async def assign(
    session: AsyncSession,
    actor: Principal,
    dispute_id: uuid.UUID,
    assignee_id: uuid.UUID | None,
    ctx: RequestContext,
) -> Dispute:
    from referloop.identity.service.accounts import get_user

    dispute = await _get(session, dispute_id, lock=True)
    if assignee_id is not None:
        if assignee_id == dispute.member_id:
            raise OwnCase("A staff member is never assigned their own dispute; assign someone else.")
        assignee = await get_user(session, assignee_id)
        if assignee.role == Role.member.value:
            raise InvalidInput("Disputes are assigned to staff members only.")
    before = _snapshot(dispute)
    dispute.assignee_id = assignee_id
    await _audit(session, dispute, "dispute.assigned", actor.user_id, ctx, before=before, staff=True)
    await session.flush()
    return dispute


async def resolve(
    session: AsyncSession, actor: Principal, dispute_id: uuid.UUID, data: Resolve, ctx: RequestContext
) -> Dispute:
    dispute = await _get(session, dispute_id, lock=True)
    if dispute.state == DisputeState.resolved.value:
        raise DisputeClosed("This dispute is already resolved.")
    refuse_own_case(actor.user_id, dispute.member_id, "resolve your own dispute")
    if data.adjustment is not None and actor.role not in (Role.finance.value, Role.admin.value):
        raise Forbidden("Only finance staff can resolve a dispute with an amount.")
    before = _snapshot(dispute)
    now = utcnow()
    if data.adjustment is not None:
        from referloop.disputes.adjustments import post_dispute_adjustment

        dispute.adjustment_entry_id = await post_dispute_adjustment(
            session, dispute, data.adjustment.amount, data.adjustment.currency
        )
        dispute.adjustment_amount = data.adjustment.amount
        dispute.adjustment_currency = data.adjustment.currency
    dispute.state = DisputeState.resolved.value
    dispute.outcome = data.outcome.value
    dispute.resolution_note = data.note
    dispute.resolved_at = now
    dispute.resolved_by = actor.user_id
    dispute.last_message_at = now  # the resolution note below is the newest message
    if dispute.first_response_at is None:
        dispute.first_response_at = now
    session.add(
        DisputeMessage(
            id=uuid7(),
            dispute_id=dispute.id,
            member_id=dispute.member_id,
            author_id=actor.user_id,
            author_role=actor.role,
            body=data.note,
            created_at=now,
        )
    )
    after = {**_snapshot(dispute), "adjustment": data.adjustment.model_dump() if data.adjustment else None}
    await _audit(
        session, dispute, "dispute.resolved", actor.user_id, ctx, before=before, after=after, staff=True
    )
    await enqueue(
        session,
        "disputes.resolved",
        {"dispute_id": str(dispute.id), "member_id": str(dispute.member_id), "outcome": data.outcome.value},
    )
    await session.flush()
    return dispute


async def withdraw(
    session: AsyncSession, member_id: uuid.UUID, dispute_id: uuid.UUID, ctx: RequestContext
) -> Dispute:
    dispute = await _get(session, dispute_id, member_id=member_id, lock=True)
    if dispute.state == DisputeState.resolved.value:
        raise DisputeClosed("This dispute is already resolved.")
    before = _snapshot(dispute)
    dispute.state = DisputeState.resolved.value
    dispute.outcome = Outcome.withdrawn.value
    dispute.resolved_at = utcnow()
    dispute.resolved_by = member_id
    await _audit(session, dispute, "dispute.withdrawn", member_id, ctx, before=before)
    await session.flush()
    return dispute
