"""Request and response shapes of the withdrawal routes (member, staff, webhooks)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from referloop.core.validation import StrictModel
from referloop.ledger.schemas import Money
from referloop.payouts.withdrawals.models import Withdrawal, WithdrawalState

CurrencyCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Reason = Annotated[str, StringConstraints(min_length=3, max_length=500)]
PaymentReference = Annotated[str, StringConstraints(min_length=4, max_length=64)]


class WithdrawalCreate(StrictModel):
    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {
                    "amount": 250000,
                    "currency": "INR",
                    "payout_method_id": "0193a3c4-8f1e-7cc2-9a4b-3e5f6a7b8c9d",
                }
            ]
        },
    )

    amount: int = Field(gt=0, le=10**15, description="Minor units taken from your available balance.")
    currency: CurrencyCode
    payout_method_id: uuid.UUID


class CancelBody(StrictModel):
    reason: Reason | None = None


class RejectBody(StrictModel):
    reason: Reason = Field(description="Shown to the member.")


class MarkPaidBody(StrictModel):
    reference: PaymentReference = Field(description="The bank's UTR, UPI or PayPal transaction id.")


class MarkFailedBody(StrictModel):
    reason: Reason = Field(description="Why the payment could not be made; shown to the member.")


class PayoutMethodSummary(BaseModel):
    id: uuid.UUID
    kind: str
    masked: str


class WithdrawalOut(BaseModel):
    """A withdrawal as its member sees it."""

    id: uuid.UUID
    state: WithdrawalState
    amount: Money = Field(description="Taken from your balance.")
    fee: Money
    payout_amount: Money = Field(description="What you receive: the amount less the fee.")
    payout_method: PayoutMethodSummary
    bank_reference: str | None = Field(description="The payment's reference (e.g. UTR) once paid.")
    failure_message: str | None = Field(description="Why the payout failed, when it did.")
    reason: str | None = Field(description="Why it was rejected or cancelled.")
    created_at: datetime
    approved_at: datetime | None
    paid_at: datetime | None
    failed_at: datetime | None
    cancelled_at: datetime | None
    rejected_at: datetime | None
    reversed_at: datetime | None

    @classmethod
    def of(cls, w: Withdrawal) -> WithdrawalOut:
        return cls.model_validate(_fields(w))


class StaffWithdrawalOut(WithdrawalOut):
    member_id: uuid.UUID
    provider: str
    attempt: int
    provider_payout_id: str | None
    provider_status: str | None
    provider_raw_status: str | None
    provider_fee: int | None
    failure_code: str | None
    last_error: str | None
    approved_by: uuid.UUID | None
    processing_at: datetime | None
    synced_at: datetime | None

    @classmethod
    def of(cls, w: Withdrawal) -> StaffWithdrawalOut:
        extra = {
            k: getattr(w, k)
            for k in (
                "member_id",
                "provider",
                "attempt",
                "provider_payout_id",
                "provider_status",
                "provider_raw_status",
                "provider_fee",
                "failure_code",
                "last_error",
                "approved_by",
                "processing_at",
                "synced_at",
            )
        }
        return cls.model_validate(_fields(w) | extra)


def _fields(w: Withdrawal) -> dict[str, object]:
    return {
        "id": w.id,
        "state": w.state,
        "amount": Money(amount=w.amount, currency=w.currency),
        "fee": Money(amount=w.fee, currency=w.currency),
        "payout_amount": Money(amount=w.net_amount, currency=w.currency),
        "payout_method": PayoutMethodSummary(
            id=w.payout_method_id, kind=w.method_kind, masked=w.method_masked
        ),
        "bank_reference": w.bank_reference,
        "failure_message": w.failure_message,
        "reason": w.reason,
        "created_at": w.created_at,
        "approved_at": w.approved_at,
        "paid_at": w.paid_at,
        "failed_at": w.failed_at,
        "cancelled_at": w.cancelled_at,
        "rejected_at": w.rejected_at,
        "reversed_at": w.reversed_at,
    }


class WebhookAck(BaseModel):
    received: bool = True
    duplicate: bool = Field(default=False, description="This event was delivered before.")


class RetryBody(StrictModel):
    override_limits: bool = Field(
        default=False,
        description="Send it even if it no longer fits the member's daily or monthly limit (audited).",
    )
