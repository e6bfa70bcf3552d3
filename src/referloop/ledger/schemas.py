"""Response shapes for ledger data, for the routes of the domains that show it (wallet, staff)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from referloop.ledger.service.balances import MemberBalance, MemberEntry
from referloop.ledger.service.entries import EntryView


class Money(BaseModel):
    """An amount in minor units of an ISO 4217 currency (e.g. 12345 INR = ₹123.45)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"amount": 12345, "currency": "INR"}]})

    amount: int = Field(ge=-(10**15), le=10**15)
    currency: str = Field(min_length=3, max_length=3, pattern=r"^[A-Z]{3}$")


class BalanceOut(BaseModel):
    currency: str
    pending: int = Field(description="Earned, not yet releasable (minor units).")
    available: int = Field(description="Withdrawable (minor units).")
    held: int = Field(description="Reserved by withdrawals in progress (minor units).")

    @classmethod
    def of(cls, b: MemberBalance) -> BalanceOut:
        return cls(currency=b.currency, pending=b.pending, available=b.available, held=b.held)


class PostingOut(BaseModel):
    account: str
    bucket: str
    amount: int
    currency: str


class EntryOut(BaseModel):
    id: uuid.UUID
    type: str
    reference_type: str | None
    reference_id: str | None
    metadata: dict[str, Any]
    reverses_entry_id: uuid.UUID | None
    created_at: datetime
    postings: list[PostingOut]

    @classmethod
    def of(cls, e: EntryView) -> EntryOut:
        return cls(
            id=e.id,
            type=e.type,
            reference_type=e.reference_type,
            reference_id=e.reference_id,
            metadata=e.metadata,
            reverses_entry_id=e.reverses_entry_id,
            created_at=e.created_at,
            postings=[
                PostingOut(account=p.account, bucket=p.bucket, amount=p.amount, currency=p.currency)
                for p in e.postings
            ],
        )


class MemberEntryOut(BaseModel):
    id: uuid.UUID
    type: str
    created_at: datetime
    reference_type: str | None
    reference_id: str | None
    currency: str
    pending: int
    available: int
    held: int

    @classmethod
    def of(cls, e: MemberEntry) -> MemberEntryOut:
        return cls(
            id=e.entry_id,
            type=e.type,
            created_at=e.created_at,
            reference_type=e.reference_type,
            reference_id=e.reference_id,
            currency=e.currency,
            pending=e.pending,
            available=e.available,
            held=e.held,
        )


class PendingTransferOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    kind: str
    status: str
    currency: str
    amount: int
    posted_amount: int | None
    expires_at: datetime | None
    reference_type: str | None
    reference_id: str | None
    created_at: datetime
    resolved_at: datetime | None
