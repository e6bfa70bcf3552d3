from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from referloop import ledger
from referloop.core.errors import NotFound
from referloop.disputes.models import SubjectType
from referloop.disputes.subjects import register_subject
from referloop.wallet.schemas import BalanceOut, TransactionOut, TransactionStatus

CSV_PAGE = 500


async def balances(session: AsyncSession, member_id: uuid.UUID) -> list[BalanceOut]:
    return [
        BalanceOut(
            currency=b.currency,
            exponent=ledger.get_currency(b.currency).exponent,
            pending=b.pending,
            available=b.available,
            held=b.held,
            total=b.total,
        )
        for b in await ledger.balances_for(session, member_id)
    ]


def _status(pending: int, held: int) -> TransactionStatus:
    return TransactionStatus.pending if pending > 0 or held > 0 else TransactionStatus.completed


def _out(e: ledger.MemberEntry) -> TransactionOut:
    return TransactionOut(
        id=e.entry_id,
        type=e.type,
        status=_status(e.pending, e.held),
        currency=e.currency,
        pending_change=e.pending,
        available_change=e.available,
        held_change=e.held,
        reference_type=e.reference_type,
        reference_id=e.reference_id,
        created_at=e.created_at,
    )


async def transactions(
    session: AsyncSession,
    member_id: uuid.UUID,
    *,
    currency: str | None,
    types: list[str] | None,
    status: TransactionStatus | None,
    since: datetime | None,
    until: datetime | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[TransactionOut], str | None]:
    rows, next_cursor = await ledger.list_member_entries(
        session,
        member_id,
        currency=currency,
        types=types,
        since=since,
        until=until,
        status=status.value if status else None,
        cursor=cursor,
        limit=limit,
    )
    return [_out(r) for r in rows], next_cursor


async def transaction(
    session: AsyncSession, member_id: uuid.UUID, entry_id: uuid.UUID
) -> list[TransactionOut]:
    """One entry as the member sees it (one line per currency it touched for them)."""
    try:
        entry = await ledger.get_entry(session, entry_id)
    except ledger.EntryNotFound as exc:
        raise NotFound("No such transaction.") from exc
    mine = f"member:{member_id}"
    changes: dict[str, dict[str, int]] = {}
    for p in entry.postings:
        if p.account == mine:
            bucket = changes.setdefault(p.currency, {"pending": 0, "available": 0, "held": 0})
            bucket[p.bucket] += p.amount
    if not changes:
        raise NotFound("No such transaction.")  # it exists, but it is not this member's
    return [
        TransactionOut(
            id=entry.id,
            type=entry.type,
            status=_status(c["pending"], c["held"]),
            currency=currency,
            pending_change=c["pending"],
            available_change=c["available"],
            held_change=c["held"],
            reference_type=entry.reference_type,
            reference_id=entry.reference_id,
            created_at=entry.created_at,
        )
        for currency, c in sorted(changes.items())
    ]


async def export_rows(
    sessions: async_sessionmaker[AsyncSession],
    member_id: uuid.UUID,
    *,
    currency: str | None,
    types: list[str] | None,
    status: TransactionStatus | None,
    since: datetime | None,
    until: datetime | None,
) -> AsyncIterator[TransactionOut]:
    """Every matching transaction, page by page, so an export of any size streams in bounded memory.
    Each page has a session of its own, closed before its rows are handed out: a client that reads
    slowly (or stops) holds no pooled connection while the stream waits for it."""
    cursor: str | None = None
    while True:
        async with sessions() as session:
            rows, cursor = await transactions(
                session,
                member_id,
                currency=currency,
                types=types,
                status=status,
                since=since,
                until=until,
                cursor=cursor,
                limit=CSV_PAGE,
            )
        for row in rows:
            yield row
        if cursor is None:
            return


async def member_owns_transaction(session: AsyncSession, member_id: uuid.UUID, entry_id: uuid.UUID) -> bool:
    try:
        await transaction(session, member_id, entry_id)
    except NotFound:
        return False
    return True


register_subject(SubjectType.transaction, member_owns_transaction)
