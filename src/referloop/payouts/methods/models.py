from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, LargeBinary, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from referloop.core.db import Base, IdMixin, SoftDeleteMixin, TimestampMixin


class PayoutMethodStatus(StrEnum):
    """Whether a method can receive payouts (besides its cool-down, see `usable_from`). Bank
    accounts, UPI ids and PayPal emails are `active` when added. A Stripe Connect account is
    `pending_onboarding` until Stripe reports that it can be paid (`account.updated`), and
    `restricted` when Stripe later stops that until the member gives Stripe more information."""

    active = "active"
    pending_onboarding = "pending_onboarding"
    restricted = "restricted"


class PayoutMethod(IdMixin, TimestampMixin, SoftDeleteMixin, Base):
    __tablename__ = "payout_methods"

    member_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # bank_account, iban, upi, paypal, stripe_account
    label: Mapped[str | None] = mapped_column(String(60))
    details_encrypted: Mapped[str] = mapped_column(Text)  # AES-256-GCM; carries its key id
    key_id: Mapped[str] = mapped_column(String(40))  # which key encrypted it: rotation finds stale rows
    masked: Mapped[str] = mapped_column(String(60))
    # Keyed hash of the normalized details: finds the same account added twice without decrypting.
    fingerprint: Mapped[bytes] = mapped_column(LargeBinary(32))
    usable_from: Mapped[datetime]  # end of the cool-down after adding, changing or activating it
    status: Mapped[str] = mapped_column(
        String(20), default=PayoutMethodStatus.active.value, server_default=PayoutMethodStatus.active.value
    )
    # When the provider's state behind `status` was reported (a Stripe event's `created`): an older
    # report arriving late changes nothing.
    status_reported_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (
        Index(
            "uq_payout_methods_member_fingerprint_live",
            "member_id",
            "fingerprint",
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )
