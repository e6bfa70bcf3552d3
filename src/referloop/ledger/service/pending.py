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

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.db import raw_connection, utcnow
from referloop.core.ids import uuid7
from referloop.ledger.errors import (
    AmountAbovePending,
    IdempotencyConflict,
    InvalidPosting,
    PendingTransferExpired,
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
from referloop.ledger.service.accounts import (
    AccountRef,
    AccountRow,
    account_id,
    create_accounts,
    member_account,
    pick_shard,
)
from referloop.ledger.service.entries import (
    PostedEntry,
    _apply,
    _apply_with_accounts,
    _body_hash,
    _canonical,
    _check_caller_key,
    _is_positive_int,
    _Line,
    _validate,
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
    # The guard is the WHERE clause: only a pending transfer changes, never above its amount, and
    # one past its expiry is only voided (the expiry job may not have reached it yet).
    guard = [
        PendingTransfer.id == transfer_id,
        PendingTransfer.status == PendingStatus.pending.value,
        PendingTransfer.amount >= (posted_amount or 0),
    ]
    if status is PendingStatus.posted:
        guard.append(or_(PendingTransfer.expires_at.is_(None), PendingTransfer.expires_at > func.now()))
    won = (
        await session.execute(
            update(PendingTransfer)
            .where(*guard)
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
        return await _lost(session, transfer, status, amount, destination)

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
    session: AsyncSession,
    transfer: PendingTransfer,
    status: PendingStatus,
    amount: int | None,
    destination: AccountRef | None,
) -> PendingResult:
    """The guarded UPDATE changed nothing: say why, or answer a repeated request with its first result."""
    if transfer.status == PendingStatus.pending.value:
        if transfer.expires_at is not None and transfer.expires_at <= utcnow():
            raise PendingTransferExpired(
                "This pending transfer has expired; it can only be voided.",
                expires_at=transfer.expires_at.isoformat(),
            )
        raise AmountAbovePending(
            f"At most {transfer.amount} can be posted from this pending transfer.",
            pending_amount=transfer.amount,
        )
    same = transfer.status == status.value and (
        status is not PendingStatus.posted
        or (transfer.posted_amount == amount and await _same_destination(session, transfer, destination))
    )
    if not same or transfer.final_entry_id is None:
        raise PendingTransferFinal(
            f"This pending transfer is already {transfer.status}.", transfer_status=transfer.status
        )
    entry = await session.get(JournalEntry, transfer.final_entry_id)
    assert entry is not None
    return PendingResult(transfer, PostedEntry(id=entry.id, created_at=entry.created_at, replayed=True))


async def _same_destination(
    session: AsyncSession, transfer: PendingTransfer, destination: AccountRef | None
) -> bool:
    """Whether a repeated post names the account the first one paid (any shard of it)."""
    if transfer.destination_account_id is None or destination is None:
        return transfer.destination_account_id is None and destination is None
    first, _ = await _ref_of(session, transfer.destination_account_id)
    return first == destination


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


@dataclass(frozen=True, slots=True)
class Earning:
    """One `earn_pending` request, for `earn_pending_many`."""

    member_id: uuid.UUID
    amount: int
    currency: str
    source: AccountRef
    idempotency_key: str
    entry_type: str = "pending.earning"
    reference_type: str | None = None
    reference_id: str | uuid.UUID | None = None
    metadata: dict[str, Any] | None = None
    expires_at: datetime | None = None


# The statements of `earn_pending_many`, each for every earning at once (raw asyncpg, arrays).
_MANY_ENTRIES = """
INSERT INTO ledger_entries (id, type, reference_type, reference_id, idempotency_key, body_hash, metadata,
                            reverses_entry_id, created_at)
SELECT e.id, e.type, e.reference_type, e.reference_id, e.key, e.body_hash, CAST(e.metadata AS jsonb), NULL,
       statement_timestamp()
FROM unnest(CAST($1 AS uuid[]), CAST($2 AS text[]), CAST($3 AS text[]), CAST($4 AS text[]),
            CAST($5 AS text[]), CAST($6 AS bytea[]), CAST($7 AS text[]))
    AS e(id, type, reference_type, reference_id, key, body_hash, metadata)
ORDER BY e.key
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id, created_at
"""
_MANY_LOCK = "SELECT id FROM ledger_accounts WHERE id = ANY(CAST($1 AS uuid[])) ORDER BY id FOR UPDATE"
_MANY_MOVE = """
UPDATE ledger_accounts a SET pending = a.pending + d.dp, available = a.available + d.da
FROM unnest(CAST($1 AS uuid[]), CAST($2 AS bigint[]), CAST($3 AS bigint[])) AS d(account_id, dp, da)
WHERE a.id = d.account_id
"""
_MANY_POSTINGS = """
INSERT INTO ledger_postings (entry_id, line, account_id, member_id, bucket, currency, amount)
SELECT * FROM unnest(CAST($1 AS uuid[]), CAST($2 AS smallint[]), CAST($3 AS uuid[]), CAST($4 AS uuid[]),
                     CAST($5 AS text[]), CAST($6 AS text[]), CAST($7 AS bigint[]))
"""
_MANY_TRANSFERS = """
INSERT INTO ledger_pending_transfers (id, kind, member_id, account_id, counterparty_account_id, currency,
                                      amount, status, expires_at, reference_type, reference_id,
                                      create_entry_id, created_at)
SELECT t.id, 'earning', t.member_id, t.account_id, t.counterparty, t.currency, t.amount, 'pending',
       t.expires_at, t.reference_type, t.reference_id, t.entry_id, t.created_at
FROM unnest(CAST($1 AS uuid[]), CAST($2 AS uuid[]), CAST($3 AS uuid[]), CAST($4 AS uuid[]),
            CAST($5 AS text[]), CAST($6 AS bigint[]), CAST($7 AS timestamptz[]), CAST($8 AS text[]),
            CAST($9 AS text[]), CAST($10 AS uuid[]), CAST($11 AS timestamptz[]))
    AS t(id, member_id, account_id, counterparty, currency, amount, expires_at, reference_type,
         reference_id, entry_id, created_at)
"""


@dataclass(frozen=True, slots=True)
class _Prepared:
    earning: Earning
    lines: list[_Line]
    reference_id: str | None
    metadata: dict[str, Any]
    body_hash: bytes
    source_row: AccountRow
    wallet_row: AccountRow
    entry_id: uuid.UUID


async def earn_pending_many(session: AsyncSession, earnings: Sequence[Earning]) -> list[PendingResult]:
    """`earn_pending` for many earnings at once, in a constant number of statements: the same
    entries, postings, balances and pending transfers, the same idempotency (a key that posted the
    same earning before answers `replayed`, one that posted another raises IdempotencyConflict, and
    nothing of the call is written then), in the caller's transaction. Keys must differ within a call.

    The accounts are created first (those that exist are left alone), then every balance row is
    locked in primary-key order, as every entry locks them. One shard of each platform account is
    picked for the whole call, so a call holds one row of it and concurrent calls spread over them."""
    if not earnings:
        return []
    if len({e.idempotency_key for e in earnings}) != len(earnings):
        raise InvalidPosting("Each earning of one call needs its own idempotency reference.")
    shards: dict[tuple[AccountRef, str], int] = {}
    prepared: list[_Prepared] = []
    for e in earnings:
        if not _is_positive_int(e.amount):
            raise InvalidPosting("A pending amount is a positive integer of minor units.")
        _check_caller_key(e.idempotency_key)
        if e.expires_at is not None and e.expires_at.tzinfo is None:
            raise InvalidPosting("expires_at must carry a time zone.")
        if e.source.is_member:
            raise InvalidPosting("An earning is funded by a platform account.")
        wallet = member_account(e.member_id)
        lines = [
            _Line(e.source, Bucket.available, e.currency, -e.amount),
            _Line(wallet, Bucket.pending, e.currency, e.amount),
        ]
        ref_id = str(e.reference_id) if e.reference_id is not None else None
        _validate(e.entry_type, e.idempotency_key, lines, e.reference_type, ref_id)
        meta = _canonical(
            {
                **(e.metadata or {}),
                "pending": {
                    "kind": PendingKind.earning.value,
                    "expires_at": e.expires_at.isoformat() if e.expires_at else None,
                },
            }
        )
        shard = shards.setdefault((e.source, e.currency), pick_shard(e.source))
        prepared.append(
            _Prepared(
                earning=e,
                lines=lines,
                reference_id=ref_id,
                metadata=meta,
                body_hash=_body_hash(e.entry_type, e.reference_type, ref_id, meta, lines, None),
                source_row=AccountRow(account_id(e.source, e.currency, shard), e.source, e.currency, shard),
                wallet_row=AccountRow(account_id(wallet, e.currency), wallet, e.currency, 0),
                entry_id=uuid7(),
            )
        )
    # A key reused with another body is found only once the entries' INSERT ran (entries are never
    # deleted): a savepoint takes back everything the call wrote, so nothing of it stays behind.
    async with session.begin_nested():
        return await _write_many(session, prepared)


async def _write_many(session: AsyncSession, prepared: list[_Prepared]) -> list[PendingResult]:
    rows = {r.id: r for p in prepared for r in (p.source_row, p.wallet_row)}
    await create_accounts(session, rows.values())
    driver = await raw_connection(session)

    inserted = {
        r["id"]: r["created_at"]
        for r in await driver.fetch(
            _MANY_ENTRIES,
            [p.entry_id for p in prepared],
            [p.earning.entry_type for p in prepared],
            [p.earning.reference_type for p in prepared],
            [p.reference_id for p in prepared],
            [p.earning.idempotency_key for p in prepared],
            [p.body_hash for p in prepared],
            [json.dumps(p.metadata, separators=(",", ":")) for p in prepared],
        )
    }
    fresh = [p for p in prepared if p.entry_id in inserted]
    replays = [p for p in prepared if p.entry_id not in inserted]
    earlier: dict[str, tuple[uuid.UUID, datetime]] = {}
    if replays:
        found = (
            await session.execute(
                select(
                    JournalEntry.id,
                    JournalEntry.created_at,
                    JournalEntry.body_hash,
                    JournalEntry.idempotency_key,
                ).where(JournalEntry.idempotency_key.in_([p.earning.idempotency_key for p in replays]))
            )
        ).all()
        by_key = {f.idempotency_key: f for f in found}
        for p in replays:
            f = by_key.get(p.earning.idempotency_key)
            if f is None:  # pragma: no cover - a conflict on the key, yet no row
                raise RuntimeError("ledger entry neither applied nor found")
            if bytes(f.body_hash) != p.body_hash:
                raise IdempotencyConflict(
                    "This idempotency reference already posted a different entry; nothing was changed.",
                    entry_id=str(f.id),
                )
            earlier[p.earning.idempotency_key] = (f.id, f.created_at)

    results: dict[uuid.UUID, PendingResult] = {}
    if fresh:
        deltas: dict[uuid.UUID, list[int]] = {}
        for p in fresh:
            for line in p.lines:
                row = p.source_row if line.ref == p.earning.source else p.wallet_row
                d = deltas.setdefault(row.id, [0, 0])
                d[0 if line.bucket is Bucket.pending else 1] += line.amount
        ids = sorted(deltas)
        await driver.fetch(_MANY_LOCK, ids)  # primary-key order, as `_APPLY` takes them
        await driver.execute(_MANY_MOVE, ids, [deltas[i][0] for i in ids], [deltas[i][1] for i in ids])
        postings: list[tuple[Any, ...]] = []
        for p in fresh:
            for n, line in enumerate(p.lines):
                row = p.source_row if line.ref == p.earning.source else p.wallet_row
                postings.append(
                    (p.entry_id, n, row.id, line.ref.member_id, line.bucket.value, line.currency, line.amount)
                )
        await driver.execute(_MANY_POSTINGS, *(list(col) for col in zip(*postings, strict=True)))
        transfers = [
            PendingTransfer(
                id=uuid7(),
                kind=PendingKind.earning.value,
                member_id=p.earning.member_id,
                account_id=p.wallet_row.id,
                counterparty_account_id=p.source_row.id,
                currency=p.earning.currency,
                amount=p.earning.amount,
                status=PendingStatus.pending.value,
                expires_at=p.earning.expires_at,
                reference_type=p.earning.reference_type,
                reference_id=p.reference_id,
                create_entry_id=p.entry_id,
                created_at=inserted[p.entry_id],
            )
            for p in fresh
        ]
        await driver.execute(
            _MANY_TRANSFERS,
            [t.id for t in transfers],
            [t.member_id for t in transfers],
            [t.account_id for t in transfers],
            [t.counterparty_account_id for t in transfers],
            [t.currency for t in transfers],
            [t.amount for t in transfers],
            [t.expires_at for t in transfers],
            [t.reference_type for t in transfers],
            [t.reference_id for t in transfers],
            [t.create_entry_id for t in transfers],
            [t.created_at for t in transfers],
        )
        for p, t in zip(fresh, transfers, strict=True):
            results[p.entry_id] = PendingResult(
                t, PostedEntry(id=p.entry_id, created_at=inserted[p.entry_id], replayed=False)
            )
    if replays:
        entry_ids = [earlier[p.earning.idempotency_key][0] for p in replays]
        existing = {
            t.create_entry_id: t
            for t in await session.scalars(
                select(PendingTransfer).where(PendingTransfer.create_entry_id.in_(entry_ids))
            )
        }
        for p in replays:
            entry_id, created_at = earlier[p.earning.idempotency_key]
            transfer = existing.get(entry_id)
            if transfer is None:  # pragma: no cover - the key belongs to a plain entry
                raise PendingTransferNotFound(
                    "This idempotency reference posted an entry that is no pending transfer."
                )
            results[p.entry_id] = PendingResult(transfer, PostedEntry(entry_id, created_at, replayed=True))
    return [results[p.entry_id] for p in prepared]
