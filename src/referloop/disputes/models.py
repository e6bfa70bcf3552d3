from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from referloop.core.db import Base, IdMixin, TimestampMixin


class SubjectType(StrEnum):
    referral = "referral"
    transaction = "transaction"
    withdrawal = "withdrawal"
    other = "other"


class DisputeState(StrEnum):
    open = "open"  # waiting for support
    awaiting_member = "awaiting_member"  # support asked the member something
    resolved = "resolved"


class Outcome(StrEnum):
    upheld = "upheld"  # the member was right (an adjustment may be posted)
    partially_upheld = "partially_upheld"
    rejected = "rejected"
    withdrawn = "withdrawn"  # the member closed it


class Dispute(IdMixin, TimestampMixin, Base):
    __tablename__ = "disputes"

    member_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    subject_type: Mapped[str] = mapped_column(String(20))
    subject_id: Mapped[uuid.UUID | None]
    title: Mapped[str] = mapped_column(String(140))
    state: Mapped[str] = mapped_column(String(20), default=DisputeState.open.value)
    assignee_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    outcome: Mapped[str | None] = mapped_column(String(20))
    resolution_note: Mapped[str | None] = mapped_column(Text)
    adjustment_amount: Mapped[int | None] = mapped_column(BigInteger)  # minor units, + credits the member
    adjustment_currency: Mapped[str | None] = mapped_column(String(3))
    adjustment_entry_id: Mapped[uuid.UUID | None]
    first_response_due_at: Mapped[datetime]
    resolution_due_at: Mapped[datetime]
    first_response_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    resolved_by: Mapped[uuid.UUID | None]
    last_message_at: Mapped[datetime]

    __table_args__ = (
        CheckConstraint("state IN ('open','awaiting_member','resolved')", name="state_known"),
        CheckConstraint("(state = 'resolved') = (outcome IS NOT NULL)", name="resolved_has_outcome"),
        Index("ix_disputes_member_id_id", "member_id", "id"),
        Index("ix_disputes_state_first_response_due_at", "state", "first_response_due_at"),
        Index("ix_disputes_assignee_id_state", "assignee_id", "state"),
    )


class DisputeMessage(IdMixin, Base):
    __tablename__ = "dispute_messages"

    dispute_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("disputes.id"), index=True)
    member_id: Mapped[uuid.UUID]  # the dispute's member: every member-owned table carries it
    author_id: Mapped[uuid.UUID | None]
    author_role: Mapped[str] = mapped_column(String(20))  # member or a staff role
    body: Mapped[str] = mapped_column(Text)
    internal: Mapped[bool] = mapped_column(default=False)  # staff-only note, never shown to the member
    created_at: Mapped[datetime]
