"""The one way a withdrawal changes state: checked against models.ALLOWED, audited and announced
(outbox event `payouts.withdrawal_<state>`) in the caller's transaction.

Callers lock the withdrawal row first (`lock`), check the move (`ensure_allowed`) before they touch
the ledger, and call `transition` last, so the audit log's chain lock is held only until commit."""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Insert, Table, bindparam, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.compliance import audit
from referloop.core.context import RequestContext
from referloop.core.db import utcnow
from referloop.core.outbox import enqueue
from referloop.core.outbox.service import enqueue_many
from referloop.payouts.withdrawals.errors import IllegalTransition, WithdrawalNotFound
from referloop.payouts.withdrawals.models import ALLOWED, Withdrawal, WithdrawalState

TOPIC_PREFIX = "payouts.withdrawal_"


def topic(state: WithdrawalState) -> str:
    return f"{TOPIC_PREFIX}{state.value}"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who moves a withdrawal: the member, a staff member, or the system (worker, webhook, sync)."""

    id: uuid.UUID | None
    type: str  # member | staff | system
    ctx: RequestContext | None = None


SYSTEM = Actor(None, "system")


async def lock(
    session: AsyncSession, withdrawal_id: uuid.UUID, *, member_id: uuid.UUID | None = None
) -> Withdrawal:
    """The withdrawal, locked for the rest of the transaction. With `member_id`, only theirs: another
    member's withdrawal is reported as missing, never as forbidden."""
    stmt = select(Withdrawal).where(Withdrawal.id == withdrawal_id)
    if member_id is not None:
        stmt = stmt.where(Withdrawal.member_id == member_id)
    withdrawal = await session.scalar(stmt.with_for_update().execution_options(populate_existing=True))
    if withdrawal is None:
        raise WithdrawalNotFound()
    return withdrawal


def ensure_allowed(withdrawal: Withdrawal, to: WithdrawalState) -> None:
    current = WithdrawalState(withdrawal.state)
    if to not in ALLOWED[current]:
        raise IllegalTransition(current.value, to.value, (s.value for s in ALLOWED[current]))


def event_payload(withdrawal: Withdrawal, state: WithdrawalState | None = None) -> dict[str, Any]:
    return {
        "withdrawal_id": str(withdrawal.id),
        "member_id": str(withdrawal.member_id),
        "state": state.value if state else withdrawal.state,
        "attempt": withdrawal.attempt,
        "amount": withdrawal.amount,
        "currency": withdrawal.currency,
        "provider": withdrawal.provider,
    }


async def transition(
    session: AsyncSession,
    withdrawal: Withdrawal,
    to: WithdrawalState,
    actor: Actor,
    *,
    details: dict[str, Any] | None = None,
) -> None:
    ensure_allowed(withdrawal, to)
    before = withdrawal.state
    withdrawal.state = to.value
    stamp = f"{to.value}_at"
    if hasattr(withdrawal, stamp):
        setattr(withdrawal, stamp, utcnow())
    await session.flush()
    await enqueue(session, topic(to), event_payload(withdrawal))
    await audit.record(
        session,
        action=f"withdrawal.{to.value}",
        actor_id=actor.id,
        actor_type=actor.type,
        target_type="withdrawal",
        target_id=withdrawal.id,
        before={"state": before},
        after={"state": to.value, "attempt": withdrawal.attempt, **(details or {})},
        ctx=actor.ctx,
    )


async def record_created(
    session: AsyncSession, withdrawal: Withdrawal, actor: Actor, *, approved_by: Actor | None = None
) -> None:
    """Insert a new withdrawal (built, not added to the session), announce and audit it. With
    `approved_by`, it was approved as it was created (below the auto-approval threshold): it is
    inserted approved, and the request and the approval are still two events and two audit rows.

    Three round trips: the row and its events in one statement, the audit chain's head, the audit
    rows in one INSERT. The audit rows come last, so that the audit chain's lock (held until commit)
    waits on as few statements as possible. The row is a plain INSERT, not a unit-of-work flush:
    `withdrawal` stays out of the session (load it again to change it in this transaction)."""
    events = [(topic(WithdrawalState.requested), event_payload(withdrawal, WithdrawalState.requested))]
    if approved_by is not None:
        if WithdrawalState.approved not in ALLOWED[WithdrawalState.requested]:  # pragma: no cover
            raise IllegalTransition("requested", "approved", ())
        events.append((topic(WithdrawalState.approved), event_payload(withdrawal)))
    values = _column_values(withdrawal)
    await enqueue_many(
        session,
        events,
        with_write=_insert_withdrawal(tuple(values)),
        with_write_params={f"withdrawal_{key}": value for key, value in values.items()},
    )
    rows = [
        audit.AuditRecord(
            action="withdrawal.requested",
            actor_id=actor.id,
            actor_type=actor.type,
            target_type="withdrawal",
            target_id=withdrawal.id,
            after={
                "state": WithdrawalState.requested.value,
                "amount": withdrawal.amount,
                "fee": withdrawal.fee,
                "currency": withdrawal.currency,
                "payout_method_id": str(withdrawal.payout_method_id),
                "provider": withdrawal.provider,
            },
            ctx=actor.ctx,
        )
    ]
    if approved_by is not None:
        rows.append(
            audit.AuditRecord(
                action="withdrawal.approved",
                actor_id=approved_by.id,
                actor_type=approved_by.type,
                target_type="withdrawal",
                target_id=withdrawal.id,
                before={"state": WithdrawalState.requested.value},
                after={
                    "state": WithdrawalState.approved.value,
                    "attempt": withdrawal.attempt,
                    "automatic": True,
                },
                ctx=approved_by.ctx,
            )
        )
    await audit.record_many(session, rows)


@functools.lru_cache(maxsize=32)
def _insert_withdrawal(keys: tuple[str, ...]) -> Insert:
    """The INSERT of a new withdrawal with these columns, made once per set of columns: the statement
    is reused, so SQLAlchemy neither compiles it nor rebuilds its cache key per request."""
    table = Withdrawal.__table__
    assert isinstance(table, Table)
    return insert(table).values(
        {key: bindparam(f"withdrawal_{key}", type_=table.c[key].type) for key in keys}
    )


def _column_values(withdrawal: Withdrawal) -> dict[str, Any]:
    """The columns set on a new, unflushed withdrawal (unset ones take their server default)."""
    return {
        column.key: value
        for column in Withdrawal.__table__.columns
        if (value := getattr(withdrawal, column.key)) is not None
    }
