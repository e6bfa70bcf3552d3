"""Ledger tables: accounts with stored balances, journal entries, postings, two-phase transfers.

Money is integer minor units. An entry's postings sum to zero per currency; a posting's positive
amount raises the balance of its account's bucket. Members' balances are therefore positive and the
platform accounts that fund them (reward expense...) go negative: the sum of every balance in one
currency is always zero. Entries and postings are immutable (triggers in migration 0002_ledger).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    LargeBinary,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from referloop.core.db import Base, utcnow
from referloop.core.ids import uuid7


class AccountCode(StrEnum):
    """What an account is. `member` accounts belong to one member; the others are the platform's."""

    member = "member"
    reward_expense = "reward_expense"  # per program (scope = program id): funds referral rewards
    payout_clearing = "payout_clearing"  # withdrawals handed to a payout provider, not yet settled
    settlement = "settlement"  # money that left the platform through a provider (settled payouts)
    fees = "fees"  # fees the platform charged (payout fees...)
    adjustments = "adjustments"  # manual corrections, dispute outcomes
    game_prizes = "game_prizes"  # funds game prizes (scope = game id, optional)
    receivables = "receivables"  # what members owe back (a clawback larger than their balance)


class Bucket(StrEnum):
    """A member account holds three balances; platform accounts use `available` only."""

    pending = "pending"  # earned, not yet releasable (a pending transfer of kind `earning`)
    available = "available"  # withdrawable
    held = "held"  # reserved by a withdrawal (a pending transfer of kind `hold`)


class PendingKind(StrEnum):
    earning = "earning"  # platform account -> member.pending; posted into member.available
    hold = "hold"  # member.available -> member.held; posted to a destination, voided back


class PendingStatus(StrEnum):
    pending = "pending"
    posted = "posted"
    voided = "voided"
    expired = "expired"


class LedgerAccount(Base):
    """One balance row per (member, currency) or per (platform code, scope, currency, shard).

    The id is derived from that key (UUIDv5), so any process knows an account's id without a
    lookup, and the balance UPDATE is the only statement an entry needs per account."""

    __tablename__ = "ledger_accounts"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32))
    member_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    scope: Mapped[str] = mapped_column(String(64), default="", server_default="")
    currency: Mapped[str] = mapped_column(String(3))
    shard: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")
    pending: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    available: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    held: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)

    __table_args__ = (
        # The last line of defence: whatever code runs, a member's balances never go below zero.
        CheckConstraint("member_id IS NULL OR pending >= 0", name="member_pending_non_negative"),
        CheckConstraint("member_id IS NULL OR available >= 0", name="member_available_non_negative"),
        CheckConstraint("member_id IS NULL OR held >= 0", name="member_held_non_negative"),
        CheckConstraint("member_id IS NOT NULL OR (pending = 0 AND held = 0)", name="platform_one_bucket"),
        CheckConstraint("(code = 'member') = (member_id IS NOT NULL)", name="member_code"),
        CheckConstraint("member_id IS NULL OR (scope = '' AND shard = 0)", name="member_unsharded"),
        CheckConstraint("currency ~ '^[A-Z]{3}$'", name="currency_format"),
        CheckConstraint("shard >= 0 AND shard < 1024", name="shard_range"),
        Index(
            "uq_ledger_accounts_member",
            "member_id",
            "currency",
            unique=True,
            postgresql_where=text("member_id IS NOT NULL"),
        ),
        Index(
            "uq_ledger_accounts_platform",
            "code",
            "scope",
            "currency",
            "shard",
            unique=True,
            postgresql_where=text("member_id IS NULL"),
        ),
        # Room on each page for a balance row's next version: its updates stay HOT (no index writes).
        {"postgresql_with": {"fillfactor": 70}},
    )


class JournalEntry(Base):
    """A set of postings that sum to zero per currency. Never updated or deleted."""

    __tablename__ = "ledger_entries"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid7)
    type: Mapped[str] = mapped_column(String(64))
    reference_type: Mapped[str | None] = mapped_column(String(50))
    reference_id: Mapped[str | None] = mapped_column(String(100))
    # One entry per idempotency reference; body_hash tells a replay from a conflicting reuse.
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    body_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict, server_default="{}")
    reverses_entry_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("ledger_entries.id"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)

    __table_args__ = (
        Index("ix_ledger_entries_reference", "reference_type", "reference_id"),
        # One reversal per entry; partial, so ordinary entries add nothing to this index.
        Index(
            "uq_ledger_entries_reverses",
            "reverses_entry_id",
            unique=True,
            postgresql_where=text("reverses_entry_id IS NOT NULL"),
        ),
    )


class Posting(Base):
    """One line of an entry: a signed amount into one bucket of one account. Never updated or deleted."""

    __tablename__ = "ledger_postings"

    entry_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("ledger_entries.id"))
    line: Mapped[int] = mapped_column(SmallInteger)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("ledger_accounts.id"))
    # Copied from the account so a member's history is one index range (and Citus can co-locate it).
    member_id: Mapped[uuid.UUID | None]
    bucket: Mapped[str] = mapped_column(String(10))
    currency: Mapped[str] = mapped_column(String(3))
    amount: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        PrimaryKeyConstraint("entry_id", "line"),
        CheckConstraint("amount <> 0", name="amount_non_zero"),
        CheckConstraint("bucket IN ('pending','available','held')", name="bucket_known"),
        Index("ix_ledger_postings_account", "account_id", "entry_id"),
        Index(
            "ix_ledger_postings_member",
            "member_id",
            "entry_id",
            postgresql_where=text("member_id IS NOT NULL"),
        ),
    )


class PendingTransfer(Base):
    """A two-phase amount: created pending, then posted (fully or partly) or voided exactly once.

    The database refuses any change to a row that is no longer pending, and any DELETE."""

    __tablename__ = "ledger_pending_transfers"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid7)
    kind: Mapped[str] = mapped_column(String(10))
    member_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("ledger_accounts.id"))
    # Where a voided earning goes back to (the platform account that funded it).
    counterparty_account_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("ledger_accounts.id"))
    # Where a posted hold went. Set with the status, before the entry creates that account: deferred.
    destination_account_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("ledger_accounts.id", deferrable=True, initially="DEFERRED")
    )
    currency: Mapped[str] = mapped_column(String(3))
    amount: Mapped[int] = mapped_column(BigInteger)
    posted_amount: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(
        String(10), default=PendingStatus.pending.value, server_default="pending"
    )
    expires_at: Mapped[datetime | None]
    reference_type: Mapped[str | None] = mapped_column(String(50))
    reference_id: Mapped[str | None] = mapped_column(String(100))
    create_entry_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("ledger_entries.id"), unique=True)
    # Set in the same UPDATE as the status; the entry is inserted right after, so the key is deferred.
    final_entry_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("ledger_entries.id", deferrable=True, initially="DEFERRED"), unique=True
    )
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)
    resolved_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint("kind IN ('earning','hold')", name="kind_known"),
        CheckConstraint("status IN ('pending','posted','voided','expired')", name="status_known"),
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("(status = 'posted') = (posted_amount IS NOT NULL)", name="posted_amount_iff_posted"),
        CheckConstraint(
            "posted_amount IS NULL OR (posted_amount > 0 AND posted_amount <= amount)",
            name="posted_within_amount",
        ),
        CheckConstraint("(status = 'pending') = (final_entry_id IS NULL)", name="final_entry_iff_final"),
        CheckConstraint(
            "kind <> 'earning' OR counterparty_account_id IS NOT NULL", name="earning_has_source"
        ),
        Index(
            "ix_ledger_pending_transfers_due",
            "expires_at",
            postgresql_where=text("status = 'pending' AND expires_at IS NOT NULL"),
        ),
        Index("ix_ledger_pending_transfers_member", "member_id", "status"),
        Index("ix_ledger_pending_transfers_reference", "reference_type", "reference_id"),
    )
