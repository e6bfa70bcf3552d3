from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field


class TransactionStatus(StrEnum):
    pending = "pending"  # money went into pending (an earning on hold) or held (a withdrawal under way)
    completed = "completed"  # only available money moved


class BalanceOut(BaseModel):
    currency: str
    exponent: int = Field(
        description="ISO 4217 minor-unit exponent: the amount in major units is amount / 10**exponent "
        "(2 for INR and USD, 0 for JPY, 3 for KWD)."
    )
    pending: int = Field(description="Earned, not yet releasable (minor units).")
    available: int = Field(description="Withdrawable now (minor units).")
    held: int = Field(description="Reserved by withdrawals under way (minor units).")
    total: int


class WalletOut(BaseModel):
    balances: list[BalanceOut]


class TransactionOut(BaseModel):
    id: uuid.UUID
    type: str = Field(description="What moved the money, e.g. pending.earning, pending.hold, adjustment.")
    status: TransactionStatus
    currency: str
    pending_change: int
    available_change: int
    held_change: int
    reference_type: str | None
    reference_id: str | None
    created_at: datetime
