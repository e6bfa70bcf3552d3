"""Reading balances: a member's wallets per currency, a platform account across its shards."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.pagination import paginate_by_id_then_desc, split_page
from referloop.ledger.models import AccountCode, JournalEntry, LedgerAccount, PendingTransfer, Posting
from referloop.ledger.service.accounts import platform_account


@dataclass(frozen=True, slots=True)
class MemberBalance:
    currency: str
    pending: int
    available: int
    held: int

    @property
    def total(self) -> int:
        return self.pending + self.available + self.held


async def balances_for(session: AsyncSession, member_id: uuid.UUID) -> list[MemberBalance]:
    """Every currency the member has an account in, sorted by currency."""
    rows = (
        await session.execute(
            select(LedgerAccount.currency, LedgerAccount.pending, LedgerAccount.available, LedgerAccount.held)
            .where(LedgerAccount.member_id == member_id)
            .order_by(LedgerAccount.currency)
        )
    ).all()
    return [MemberBalance(r.currency, r.pending, r.available, r.held) for r in rows]


async def balance_of(session: AsyncSession, member_id: uuid.UUID, currency: str) -> MemberBalance:
    """One currency's balances (zeros when the member never had any)."""
    for b in await balances_for(session, member_id):
        if b.currency == currency:
            return b
    return MemberBalance(currency, 0, 0, 0)


async def platform_balance(
    session: AsyncSession, code: AccountCode | str, currency: str, scope: str = ""
) -> int:
    """A platform account's balance: the sum of its shards."""
    ref = platform_account(code, scope)
    total = await session.scalar(
        select(func.coalesce(func.sum(LedgerAccount.available), 0)).where(
            LedgerAccount.member_id.is_(None),
            LedgerAccount.code == ref.code.value,
            LedgerAccount.scope == ref.scope,
            LedgerAccount.currency == currency,
        )
    )
    return int(total or 0)


@dataclass(frozen=True, slots=True)
class MemberEntry:
    """One entry as a member sees it: its net effect on each of their buckets in one currency."""

    entry_id: uuid.UUID
    type: str
    created_at: datetime
    reference_type: str | None
    reference_id: str | None
    metadata: dict[str, Any]
    currency: str
    pending: int
    available: int
    held: int


async def list_member_entries(
    session: AsyncSession,
    member_id: uuid.UUID,
    *,
    currency: str | None = None,
    types: list[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    status: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[MemberEntry], str | None]:
    """A member's ledger history, newest first, cursor-paginated (core.pagination)."""
    net = func.sum(Posting.amount)
    stmt = (
        select(
            JournalEntry.id,
            JournalEntry.type,
            JournalEntry.created_at,
            JournalEntry.reference_type,
            JournalEntry.reference_id,
            JournalEntry.meta,
            Posting.currency,
            net.filter(Posting.bucket == "pending").label("pending"),
            net.filter(Posting.bucket == "available").label("available"),
            net.filter(Posting.bucket == "held").label("held"),
        )
        .join(Posting, Posting.entry_id == JournalEntry.id)
        .where(Posting.member_id == member_id)
        .group_by(JournalEntry.id, Posting.currency)
    )
    if currency:
        stmt = stmt.where(Posting.currency == currency)
    if types:
        stmt = stmt.where(JournalEntry.type.in_(types))
    if since:
        stmt = stmt.where(JournalEntry.created_at >= since)
    if until:
        stmt = stmt.where(JournalEntry.created_at < until)
    if status is not None:
        # "pending": the entry put money into the member's pending or held balance (it awaits a
        # release, a payout or a void); "completed": it moved available money only.
        awaiting = func.coalesce(net.filter(Posting.bucket.in_(("pending", "held"))), 0) > 0
        stmt = stmt.having(awaiting if status == "pending" else ~awaiting)
    # One row per entry and currency: an entry may move two currencies for the member.
    rows = (
        await session.execute(
            paginate_by_id_then_desc(stmt, JournalEntry.id, Posting.currency, cursor, limit)
        )
    ).all()
    page, next_cursor = split_page(list(rows), limit, lambda r: [r.id, r.currency])
    return [
        MemberEntry(
            entry_id=r.id,
            type=r.type,
            created_at=r.created_at,
            reference_type=r.reference_type,
            reference_id=r.reference_id,
            metadata=r.meta,
            currency=r.currency,
            pending=int(r.pending or 0),
            available=int(r.available or 0),
            held=int(r.held or 0),
        )
        for r in page
    ], next_cursor


async def list_pending_transfers(
    session: AsyncSession, member_id: uuid.UUID, *, status: str | None = None, limit: int = 100
) -> list[PendingTransfer]:
    stmt = select(PendingTransfer).where(PendingTransfer.member_id == member_id)
    if status:
        stmt = stmt.where(PendingTransfer.status == status)
    return list((await session.scalars(stmt.order_by(PendingTransfer.id.desc()).limit(limit))).all())


async def currency_totals(session: AsyncSession) -> dict[str, int]:
    """The sum of every balance per currency: always zero in a sound ledger."""
    rows = await session.execute(
        text("SELECT currency, sum(pending + available + held) FROM ledger_accounts GROUP BY currency")
    )
    return {r[0]: int(r[1]) for r in rows}
