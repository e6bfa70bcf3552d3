"""Withdrawals and the inbox of payout provider webhooks."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, SmallInteger, String, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from referloop.core.db import Base, IdMixin, TimestampMixin, utcnow


class WithdrawalState(StrEnum):
    requested = "requested"  # the amount is held; waiting for approval
    approved = "approved"  # by finance staff, or automatically below the threshold
    processing = "processing"  # handed to the payout provider
    paid = "paid"  # the provider paid it (final, unless the bank returns it: `reversed`)
    failed = "failed"  # the provider could not pay; the held amount went back (staff may retry)
    cancelled = "cancelled"  # by the member before processing; the held amount went back
    rejected = "rejected"  # by finance staff before processing; the held amount went back
    reversed = "reversed"  # paid, then returned by the bank; re-credited to the member once


# The state machine. Every change goes through service.transitions, which checks this map.
ALLOWED: dict[WithdrawalState, frozenset[WithdrawalState]] = {
    WithdrawalState.requested: frozenset(
        {WithdrawalState.approved, WithdrawalState.cancelled, WithdrawalState.rejected}
    ),
    WithdrawalState.approved: frozenset(
        {WithdrawalState.processing, WithdrawalState.cancelled, WithdrawalState.rejected}
    ),
    WithdrawalState.processing: frozenset({WithdrawalState.paid, WithdrawalState.failed}),
    WithdrawalState.paid: frozenset({WithdrawalState.reversed}),
    WithdrawalState.failed: frozenset({WithdrawalState.approved}),  # a staff retry
    WithdrawalState.cancelled: frozenset(),
    WithdrawalState.rejected: frozenset(),
    WithdrawalState.reversed: frozenset(),
}

# Withdrawals whose money did not leave (or came back) don't count towards daily and monthly limits.
NOT_COUNTED = (
    WithdrawalState.failed,
    WithdrawalState.cancelled,
    WithdrawalState.rejected,
    WithdrawalState.reversed,
)


class Withdrawal(IdMixin, TimestampMixin, Base):
    __tablename__ = "withdrawals"

    member_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    amount: Mapped[int] = mapped_column(BigInteger)  # taken from the member's balance
    fee: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    currency: Mapped[str] = mapped_column(String(3))
    payout_method_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("payout_methods.id"))
    method_kind: Mapped[str] = mapped_column(String(20))  # copied: shown even if the method is removed
    method_masked: Mapped[str] = mapped_column(String(60))
    state: Mapped[str] = mapped_column(String(20), default=WithdrawalState.requested.value)
    provider: Mapped[str] = mapped_column(String(20))  # chosen when requested
    # 1, then +1 per staff retry of a failed payout: each attempt has its own hold and provider key.
    attempt: Mapped[int] = mapped_column(SmallInteger, default=1, server_default="1")
    hold_transfer_id: Mapped[uuid.UUID]  # the ledger's pending transfer of the current attempt
    provider_payout_id: Mapped[str | None] = mapped_column(String(120))
    provider_status: Mapped[str | None] = mapped_column(String(20))  # PayoutStatus, normalized
    provider_raw_status: Mapped[str | None] = mapped_column(String(40))  # the provider's own word
    provider_fee: Mapped[int | None] = mapped_column(BigInteger)  # what the provider charged us
    bank_reference: Mapped[str | None] = mapped_column(String(64))  # UTR, or what staff recorded
    failure_code: Mapped[str | None] = mapped_column(String(64))
    failure_message: Mapped[str | None] = mapped_column(String(500))
    reason: Mapped[str | None] = mapped_column(String(500))  # of a rejection or cancellation
    last_error: Mapped[str | None] = mapped_column(Text)  # the last provider call that did not answer
    approved_by: Mapped[uuid.UUID | None]
    approved_at: Mapped[datetime | None]
    processing_at: Mapped[datetime | None]
    paid_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]
    rejected_at: Mapped[datetime | None]
    reversed_at: Mapped[datetime | None]
    synced_at: Mapped[datetime | None]  # last time `payouts sync` asked the provider

    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("fee >= 0 AND fee < amount", name="fee_below_amount"),
        CheckConstraint("currency ~ '^[A-Z]{3}$'", name="currency_format"),
        CheckConstraint(
            "state IN ('requested','approved','processing','paid','failed','cancelled','rejected','reversed')",
            name="state_known",
        ),
        CheckConstraint("attempt >= 1", name="attempt_positive"),
        Index("ix_withdrawals_member_id", "member_id", "id"),
        Index("ix_withdrawals_member_created", "member_id", "created_at"),
        Index("ix_withdrawals_state", "state", "id"),
        Index(
            "ix_withdrawals_processing",
            "processing_at",
            postgresql_where=text("state = 'processing'"),
        ),
        Index(
            "uq_withdrawals_provider_payout",
            "provider",
            "provider_payout_id",
            unique=True,
            postgresql_where=text("provider_payout_id IS NOT NULL"),
        ),
    )

    @property
    def net_amount(self) -> int:
        """What the member receives: the amount less our fee."""
        return self.amount - self.fee

    @property
    def provider_key(self) -> str:
        """Our idempotency key at the provider for this attempt: the same on every retry of the
        attempt (a crash, a timeout), a new one only when staff retry a payout that failed."""
        return f"{self.id.hex}-{self.attempt}"


class WebhookInbox(Base):
    """A verified provider webhook, stored before it is handled: (source, external_id) is unique, so
    a repeated delivery is recognised, and `processed_at` says whether handling finished."""

    __tablename__ = "payout_webhook_inbox"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(20))
    external_id: Mapped[str] = mapped_column(String(120))
    event_type: Mapped[str] = mapped_column(String(80))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    received_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)
    processed_at: Mapped[datetime | None]
    withdrawal_id: Mapped[uuid.UUID | None]
    outcome: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (
        Index("uq_payout_webhook_inbox_source_external_id", "source", "external_id", unique=True),
        Index(
            "ix_payout_webhook_inbox_unprocessed",
            "received_at",
            postgresql_where=text("processed_at IS NULL"),
        ),
    )
