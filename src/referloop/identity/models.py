from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, ForeignKey, Index, LargeBinary, SmallInteger, String, text
from sqlalchemy.orm import Mapped, mapped_column

from referloop.core.db import Base, IdMixin, SoftDeleteMixin, TimestampMixin


class Role(StrEnum):
    member = "member"
    support = "support"
    finance = "finance"
    admin = "admin"

    @property
    def is_staff(self) -> bool:
        return self is not Role.member


MAX_MEMBER_LEVEL = 1000


class KycStatus(StrEnum):
    none = "none"
    pending = "pending"
    verified = "verified"
    rejected = "rejected"


class User(IdMixin, TimestampMixin, SoftDeleteMixin, Base):
    __tablename__ = "users"

    email: Mapped[str | None] = mapped_column(String(254))
    phone: Mapped[str | None] = mapped_column(String(20))
    password_hash: Mapped[str] = mapped_column(String(255))
    display_name: Mapped[str] = mapped_column(String(80))
    role: Mapped[str] = mapped_column(String(20), default=Role.member.value, server_default="member")
    referral_code: Mapped[str] = mapped_column(String(8))
    invited_with_code: Mapped[str | None] = mapped_column(String(32))
    email_verified_at: Mapped[datetime | None]
    phone_verified_at: Mapped[datetime | None]
    locale: Mapped[str] = mapped_column(String(35), default="en", server_default="en")
    country: Mapped[str | None] = mapped_column(String(2))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC", server_default="UTC")
    preferred_currency: Mapped[str | None] = mapped_column(String(3))
    kyc_status: Mapped[str] = mapped_column(String(20), default=KycStatus.none.value, server_default="none")
    # The member's level (1 for everyone until the engagement issue computes levels); set by admins.
    # Campaigns may require a minimum level (`campaigns.min_member_level`).
    level: Mapped[int] = mapped_column(SmallInteger, default=1, server_default="1")
    totp_secret: Mapped[str | None] = mapped_column(String(255))  # field-encrypted
    totp_enabled_at: Mapped[datetime | None]
    totp_last_step: Mapped[int | None]  # the last accepted time step: a code is never accepted twice
    password_changed_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint("email IS NOT NULL OR phone IS NOT NULL", name="email_or_phone"),
        CheckConstraint("role IN ('member','support','finance','admin')", name="role_known"),
        CheckConstraint("kyc_status IN ('none','pending','verified','rejected')", name="kyc_status_known"),
        CheckConstraint(f"level BETWEEN 1 AND {MAX_MEMBER_LEVEL}", name="level_bounded"),
        Index("uq_users_email_live", "email", unique=True, postgresql_where=text("deleted_at IS NULL")),
        Index("uq_users_phone_live", "phone", unique=True, postgresql_where=text("deleted_at IS NULL")),
        Index("uq_users_referral_code", "referral_code", unique=True),
    )


class AuthSession(IdMixin, Base):
    """One signed-in device; a family of rotating refresh tokens belongs to it."""

    __tablename__ = "auth_sessions"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    device_name: Mapped[str | None] = mapped_column(String(100))
    mfa: Mapped[bool] = mapped_column(default=False, server_default="false")
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(String(50))


class RefreshToken(IdMixin, Base):
    __tablename__ = "refresh_tokens"

    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("auth_sessions.id"), index=True)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class CodePurpose(StrEnum):
    verify_email = "verify_email"
    verify_phone = "verify_phone"
    reset_password = "reset_password"  # noqa: S105 - a purpose name, not a secret


class OneTimeCode(IdMixin, Base):
    __tablename__ = "one_time_codes"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    purpose: Mapped[str] = mapped_column(String(20))
    target: Mapped[str] = mapped_column(String(254))  # the email or phone the code was sent to
    code_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")
    consumed_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_one_time_codes_user_purpose", "user_id", "purpose", "created_at"),)
