"""Partner API keys. Only a SHA-256 of the key is stored: the key is 190 random bits, so a fast hash is
as good as a slow one here, and lookups stay one indexed query."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from referloop.core.db import Base, IdMixin, TimestampMixin


class PartnerApiKey(IdMixin, TimestampMixin, Base):
    __tablename__ = "partner_api_keys"

    university_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("universities.id"))
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    # What a list may show: `rlp_live_Ab3d` and the last four characters.
    display_prefix: Mapped[str] = mapped_column(String(20))
    last4: Mapped[str] = mapped_column(String(4))
    contact_email: Mapped[str] = mapped_column(String(254))
    rate_limit: Mapped[str | None] = mapped_column(String(40))  # None: the `partner_rate_limit` setting
    created_by: Mapped[uuid.UUID | None]
    # Set when the key is rotated: it keeps working until then (the overlap), then answers 401.
    expires_at: Mapped[datetime | None]
    replaced_by_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("partner_api_keys.id"))
    revoked_at: Mapped[datetime | None]
    revoked_by: Mapped[uuid.UUID | None]
    revoked_reason: Mapped[str | None] = mapped_column(String(200))
    last_used_at: Mapped[datetime | None]

    __table_args__ = (
        Index("uq_partner_api_keys_token_hash", "token_hash", unique=True),
        Index("ix_partner_api_keys_university_id", "university_id"),
    )
