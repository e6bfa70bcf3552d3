"""Reading withdrawals: a member's own (another member's is "not found"), and staff lists."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.pagination import paginate_by_id_desc, split_page
from referloop.payouts.withdrawals.errors import WithdrawalNotFound
from referloop.payouts.withdrawals.models import Withdrawal, WithdrawalState


async def get_for_member(session: AsyncSession, member_id: uuid.UUID, withdrawal_id: uuid.UUID) -> Withdrawal:
    withdrawal = await session.scalar(
        select(Withdrawal).where(Withdrawal.id == withdrawal_id, Withdrawal.member_id == member_id)
    )
    if withdrawal is None:
        raise WithdrawalNotFound()
    return withdrawal


async def get(session: AsyncSession, withdrawal_id: uuid.UUID) -> Withdrawal:
    withdrawal = await session.get(Withdrawal, withdrawal_id)
    if withdrawal is None:
        raise WithdrawalNotFound()
    return withdrawal


async def member_owns(session: AsyncSession, member_id: uuid.UUID, withdrawal_id: uuid.UUID) -> bool:
    found = await session.scalar(
        select(Withdrawal.id).where(Withdrawal.id == withdrawal_id, Withdrawal.member_id == member_id)
    )
    return found is not None


async def list_withdrawals(
    session: AsyncSession,
    *,
    member_id: uuid.UUID | None = None,
    state: WithdrawalState | None = None,
    provider: str | None = None,
    currency: str | None = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    cursor: str | None,
    limit: int,
) -> tuple[Sequence[Withdrawal], str | None]:
    """Newest first. Members call it with their own id; staff with any of the filters."""
    stmt = select(Withdrawal)
    if member_id is not None:
        stmt = stmt.where(Withdrawal.member_id == member_id)
    if state is not None:
        stmt = stmt.where(Withdrawal.state == state.value)
    if provider is not None:
        stmt = stmt.where(Withdrawal.provider == provider)
    if currency is not None:
        stmt = stmt.where(Withdrawal.currency == currency)
    if created_from is not None:
        stmt = stmt.where(Withdrawal.created_at >= created_from)
    if created_to is not None:
        stmt = stmt.where(Withdrawal.created_at < created_to)
    rows = list((await session.scalars(paginate_by_id_desc(stmt, Withdrawal.id, cursor, limit))).all())
    return split_page(rows, limit, lambda w: [w.id])
