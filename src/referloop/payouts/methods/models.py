from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, LargeBinary, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from referloop.core.db import Base, IdMixin, SoftDeleteMixin, TimestampMixin


class PayoutMethod(IdMixin, TimestampMixin, SoftDeleteMixin, Base):
    __tablename__ = "payout_methods"

    member_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # bank_account, upi, paypal
    label: Mapped[str | None] = mapped_column(String(60))
    details_encrypted: Mapped[str] = mapped_column(Text)  # AES-256-GCM; carries its key id
    key_id: Mapped[str] = mapped_column(String(40))  # which key encrypted it: rotation finds stale rows
    masked: Mapped[str] = mapped_column(String(60))
    # Keyed hash of the normalized details: finds the same account added twice without decrypting.
    fingerprint: Mapped[bytes] = mapped_column(LargeBinary(32))
    usable_from: Mapped[datetime]  # end of the cool-down after adding or changing it

    __table_args__ = (
        Index(
            "uq_payout_methods_member_fingerprint_live",
            "member_id",
            "fingerprint",
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )
