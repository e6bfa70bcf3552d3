"""Two-phase amounts (TigerBeetle's pending transfers): created pending, then posted or voided once.

Two kinds:
- `earning`: a platform account -> member.pending (a reward not yet releasable). Posting moves it
  into member.available; voiding or expiry returns it to the platform account.
- `hold`: member.available -> member.held (a withdrawal's reservation). Posting moves it to a
  destination (payout clearing...); voiding (`release`) returns it to member.available.
A partial post moves part of it and returns the rest, like TigerBeetle: never more than pending.

Exactly once: the status changes in one guarded UPDATE (`WHERE status = 'pending'`), which also
stamps the id of the entry that is posted next in the same transaction. Two callers racing on one
transfer serialise on that row; the loser sees a final status and gets either the first answer
(the same request repeated) or PendingTransferFinal. Locks: the transfer row first, then the
balance rows in id order, on every path.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.db import utcnow
from referloop.core.ids import uuid7
from referloop.ledger.errors import (
    AmountAbovePending,
    InvalidPosting,
    PendingTransferFinal,
    PendingTransferNotFound,
)
from referloop.ledger.models import (
    AccountCode,
    Bucket,
    JournalEntry,
    LedgerAccount,
    PendingKind,
    PendingStatus,
    PendingTransfer,
)
from referloop.ledger.service.accounts import AccountRef, account_id, member_account, pick_shard
from referloop.ledger.service.entries import (
    PostedEntry,
    _apply,
    _apply_with_accounts,
    _check_caller_key,
    _is_positive_int,
    _Line,
)


@dataclass(frozen=True, slots=True)
class PendingResult:
    transfer: PendingTransfer
    entry: PostedEntry  # the entry this call posted (or, on a replay, the one it posted first)

    @property
    def replayed(self) -> bool:
        return self.entry.replayed


def _final_key(transfer_id: uuid.UUID) -> str:
    return f"ledger.pending:{transfer_id}:final"


async def _create(
    session: AsyncSession,
    *,
    kind: PendingKind,
    member_id: uuid.UUID,
    amount: int,
    currency: str,
    source: AccountRef | None,
    idempotency_key: str,
    entry_type: str,
    reference_type: str | None,
    reference_id: str | uuid.UUID | None,
    metadata: dict[str, Any] | None,
    expires_at: datetime | None,
) -> PendingResult:
    if not _is_positive_int(amount):
        raise InvalidPosting("A pending amount is a positive integer of minor units.")
    _check_caller_key(idempotency_key)
    if expires_at is not None and expires_at.tzinfo is None:
        raise InvalidPosting("expires_at must carry a time zone.")
    wallet = member_account(member_id)
    if kind is PendingKind.earning:
        assert source is not None
        if source.is_member:
            raise InvalidPosting("An earning is funded by a platform account.")
        lines = [
            _Line(source, Bucket.available, currency, -amount),
            _Line(wallet, Bucket.pending, currency, amount),
        ]
    else:
        lines = [
            _Line(wallet, Bucket.available, currency, -amount),
            _Line(wallet, Bucket.held, currency, amount),
        ]
    ref_id = str(reference_id) if reference_id is not None else None
    # The transfer's own terms are part of the entry's body, so a replay with other terms conflicts.
    meta = {
        **(metadata or {}),
        "pending": {"kind": kind.value, "expires_at": expires_at.isoformat() if expires_at else None},
    }
    entry, used = await _apply_with_accounts(
        session,
        entry_type=entry_type,
        lines=lines,
        idempotency_key=idempotency_key,
        reference_type=reference_type,
        reference_id=ref_id,
        metadata=meta,
    )
    if entry.replayed:
        existing = await session.scalar(
            select(PendingTransfer).where(PendingTransfer.create_entry_id == entry.id)
        )
        if existing is None:  # pragma: no cover - the key belongs to a plain entry
            raise PendingTransferNotFound(
                "This idempotency reference posted an entry that is no pending transfer."
            )
        return PendingResult(existing, entry)
    counterparty = used[(source, currency)] if source is not None else None
    transfer = PendingTransfer(
        id=uuid7(),
        kind=kind.value,
        member_id=member_id,
        account_id=account_id(wallet, currency),
        counterparty_account_id=counterparty,
        currency=currency,
        amount=amount,
        status=PendingStatus.pending.value,
        expires_at=expires_at,
        reference_type=reference_type,
        reference_id=ref_id,
        create_entry_id=entry.id,
        created_at=entry.created_at,
    )
    session.add(transfer)
    await session.flush()
    return PendingResult(transfer, entry)


async def earn_pending(
    session: AsyncSession,
    *,
    member_id: uuid.UUID,
    amount: int,
    currency: str,
    source: AccountRef,
    idempotency_key: str,
    entry_type: str = "pending.earning",
    reference_type: str | None = None,
    reference_id: str | uuid.UUID | None = None,
    metadata: dict[str, Any] | None = None,
    expires_at: datetime | None = None,
) -> PendingResult:
    """Credit a member's pending balance from a platform account (e.g. a reward awaiting its
    hold period). `post_pending` releases it to available; `void_pending` or expiry takes it back."""
    return await _create(
        session,
        kind=PendingKind.earning,
        member_id=member_id,
        amount=amount,
        currency=currency,
        source=source,
        idempotency_key=idempotency_key,
        entry_type=entry_type,
        reference_type=reference_type,
        reference_id=reference_id,
        metadata=metadata,
        expires_at=expires_at,
    )


async def hold(
    session: AsyncSession,
    *,
    member_id: uuid.UUID,
    amount: int,
    currency: str,
    idempotency_key: str,
    entry_type: str = "pending.hold",
    reference_type: str | None = None,
    reference_id: str | uuid.UUID | None = None,
    metadata: dict[str, Any] | None = None,
    expires_at: datetime | None = None,
) -> PendingResult:
    """Reserve `amount` of a member's available balance (InsufficientFunds if it is not there).
    `post_pending(..., destination=...)` spends it; `release` gives it back."""
    return await _create(
        session,
        kind=PendingKind.hold,
        member_id=member_id,
        amount=amount,
        currency=currency,
        source=None,
        idempotency_key=idempotency_key,
        entry_type=entry_type,
        reference_type=reference_type,
        reference_id=reference_id,
        metadata=metadata,
        expires_at=expires_at,
    )


async def _resolve(
    session: AsyncSession,
    transfer_id: uuid.UUID,
    *,
    status: PendingStatus,
    amount: int | None,
    destination: AccountRef | None,
    entry_type: str | None,
    metadata: dict[str, Any] | None,
) -> PendingResult:
    transfer = await session.get(PendingTransfer, transfer_id)
    if transfer is None:
        raise PendingTransferNotFound()
    kind = PendingKind(transfer.kind)
    if status is PendingStatus.posted:
        if kind is PendingKind.earning and destination is not None:
            raise InvalidPosting(
                "A posted earning goes to the member's available balance; give no destination."
            )
        if kind is PendingKind.hold and destination is None:
            raise InvalidPosting("Posting a hold needs a destination account (e.g. payout clearing).")
        if amount is None:
            amount = transfer.amount
        if not _is_positive_int(amount):
            raise InvalidPosting("The amount to post is a positive integer of minor units.")
    currency = transfer.currency
    # Shards are chosen here, so the row recorded on the transfer is the one the entry moves.
    dest_shard = pick_shard(destination) if destination is not None else 0
    dest_id = account_id(destination, currency, dest_shard) if destination is not None else None
    final_entry_id = uuid7()
    posted_amount = amount if status is PendingStatus.posted else None
    # The guard is the WHERE clause: only a pending transfer changes, and never above its amount.
    won = (
        await session.execute(
            update(PendingTransfer)
            .where(
                PendingTransfer.id == transfer_id,
                PendingTransfer.status == PendingStatus.pending.value,
                PendingTransfer.amount >= (posted_amount or 0),
            )
            .values(
                status=status.value,
                posted_amount=posted_amount,
                destination_account_id=dest_id,
                final_entry_id=final_entry_id,
                resolved_at=utcnow(),
            )
            .returning(PendingTransfer)
            .execution_options(populate_existing=True, synchronize_session=False)
        )
    ).scalar_one_or_none()
    if won is None:
        await session.refresh(transfer)
        return await _lost(session, transfer, status, amount)

    wallet = member_account(transfer.member_id)
    total = transfer.amount
    posted = amount if status is PendingStatus.posted else 0
    assert posted is not None
    rest = total - posted
    lines: list[_Line]
    shards: dict[AccountRef, int] = {}
    if destination is not None:
        shards[destination] = dest_shard
    if kind is PendingKind.earning:
        source, source_shard = await _ref_of(session, transfer.counterparty_account_id)
        shards[source] = source_shard  # back to the very row it came from
        lines = [_Line(wallet, Bucket.pending, currency, -total)]
        if posted:
            lines.append(_Line(wallet, Bucket.available, currency, posted))
        if rest:
            lines.append(_Line(source, Bucket.available, currency, rest))
    else:
        lines = [_Line(wallet, Bucket.held, currency, -total)]
        if posted:
            assert destination is not None
            lines.append(_Line(destination, Bucket.available, currency, posted))
        if rest:
            lines.append(_Line(wallet, Bucket.available, currency, rest))
    entry = await _apply(
        session,
        entry_type=entry_type or f"pending.{status.value}",
        lines=_merge(lines),
        idempotency_key=_final_key(transfer.id),
        reference_type=transfer.reference_type,
        reference_id=transfer.reference_id,
        metadata={
            **(metadata or {}),
            "pending_transfer_id": str(transfer.id),
            "kind": kind.value,
            "status": status.value,
            "amount": total,
            "posted_amount": posted,
        },
        entry_id=final_entry_id,
        shards=shards,
    )
    return PendingResult(transfer, entry)


def _merge(lines: Sequence[_Line]) -> list[_Line]:
    """One line per account and bucket (a hold posted back to its own wallet nets out)."""
    sums: dict[tuple[AccountRef, Bucket, str], int] = {}
    for ln in lines:
        sums[(ln.ref, ln.bucket, ln.currency)] = sums.get((ln.ref, ln.bucket, ln.currency), 0) + ln.amount
    return [_Line(ref, bucket, cur, amt) for (ref, bucket, cur), amt in sums.items() if amt != 0]


async def _lost(
    session: AsyncSession, transfer: PendingTransfer, status: PendingStatus, amount: int | None
) -> PendingResult:
    """The guarded UPDATE changed nothing: say why, or answer a repeated request with its first result."""
    if transfer.status == PendingStatus.pending.value:
        raise AmountAbovePending(
            f"At most {transfer.amount} can be posted from this pending transfer.",
            pending_amount=transfer.amount,
        )
    same = transfer.status == status.value and (
        status is not PendingStatus.posted or transfer.posted_amount == amount
    )
    if not same or transfer.final_entry_id is None:
        raise PendingTransferFinal(
            f"This pending transfer is already {transfer.status}.", status=transfer.status
        )
    entry = await session.get(JournalEntry, transfer.final_entry_id)
    assert entry is not None
    return PendingResult(transfer, PostedEntry(id=entry.id, created_at=entry.created_at, replayed=True))


async def _ref_of(session: AsyncSession, account: uuid.UUID | None) -> tuple[AccountRef, int]:
    row = (
        await session.execute(
            select(
                LedgerAccount.code, LedgerAccount.member_id, LedgerAccount.scope, LedgerAccount.shard
            ).where(LedgerAccount.id == account)
        )
    ).one()
    return AccountRef(AccountCode(row.code), member_id=row.member_id, scope=row.scope), row.shard


async def post_pending(
    session: AsyncSession,
    transfer_id: uuid.UUID,
    *,
    amount: int | None = None,
    destination: AccountRef | None = None,
    entry_type: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> PendingResult:
    """Post a pending transfer, fully (amount=None) or partly; the rest goes back where it came from.

    Earnings go to the member's available balance; holds need a `destination`. Repeating the same
    post returns the first result; anything else on a final transfer raises PendingTransferFinal."""
    return await _resolve(
        session,
        transfer_id,
        status=PendingStatus.posted,
        amount=amount,
        destination=destination,
        entry_type=entry_type,
        metadata=metadata,
    )


async def void_pending(
    session: AsyncSession,
    transfer_id: uuid.UUID,
    *,
    entry_type: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> PendingResult:
    """Cancel a pending transfer: an earning returns to its platform account, a hold to available."""
    return await _resolve(
        session,
        transfer_id,
        status=PendingStatus.voided,
        amount=None,
        destination=None,
        entry_type=entry_type,
        metadata=metadata,
    )


async def release(
    session: AsyncSession, transfer_id: uuid.UUID, *, metadata: dict[str, Any] | None = None
) -> PendingResult:
    """Give a hold back to the member's available balance (a failed or cancelled withdrawal)."""
    return await void_pending(session, transfer_id, entry_type="pending.release", metadata=metadata)


async def expire_due(session: AsyncSession, *, now: datetime | None = None, limit: int = 100) -> int:
    """Void pending transfers whose `expires_at` has passed (status `expired`); returns how many.

    SKIP LOCKED lets several workers share the work, and a transfer being posted right now is
    skipped rather than waited for."""
    ids = (
        (
            await session.execute(
                text(
                    "SELECT id FROM ledger_pending_transfers"
                    " WHERE status = 'pending' AND expires_at IS NOT NULL AND expires_at <= :now"
                    " ORDER BY expires_at LIMIT :limit FOR UPDATE SKIP LOCKED"
                ),
                {"now": now or utcnow(), "limit": limit},
            )
        )
        .scalars()
        .all()
    )
    for transfer_id in ids:
        await _resolve(
            session,
            transfer_id,
            status=PendingStatus.expired,
            amount=None,
            destination=None,
            entry_type="pending.expired",
            metadata=None,
        )
    return len(ids)


async def get_pending(session: AsyncSession, transfer_id: uuid.UUID) -> PendingTransfer:
    transfer = await session.get(PendingTransfer, transfer_id)
    if transfer is None:
        raise PendingTransferNotFound()
    return transfer
