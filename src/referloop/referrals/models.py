"""Tables of the referrals domain: catalogue, campaigns, vanity codes, devices, clicks, attributions.

The referral lifecycle, rewards and the partner API add their own tables beside these."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from referloop.core.db import Base, IdMixin, SoftDeleteMixin, TimestampMixin, utcnow
from referloop.identity.models import MAX_MEMBER_LEVEL


class ProgramLevel(StrEnum):
    undergraduate = "undergraduate"
    postgraduate = "postgraduate"
    diploma = "diploma"
    certificate = "certificate"


class CampaignState(StrEnum):
    draft = "draft"
    active = "active"
    paused = "paused"
    ended = "ended"


class BudgetPeriod(StrEnum):
    day = "day"
    week = "week"
    month = "month"
    year = "year"
    campaign = "campaign"  # the whole life of the campaign


class VanityStatus(StrEnum):
    active = "active"
    replaced = "replaced"  # the member chose another one; old links still resolve to them
    revoked = "revoked"  # an admin revoked it; it resolves to no one and stays reserved


class AttributionVia(StrEnum):
    click = "click"
    code = "code"


def _in(values: type[StrEnum]) -> str:
    return ",".join(f"'{v.value}'" for v in values)


class University(IdMixin, TimestampMixin, SoftDeleteMixin, Base):
    """A partner institution. Retired = soft-deleted (kept for history and old referrals)."""

    __tablename__ = "universities"

    name: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column(String(100))
    country: Mapped[str] = mapped_column(String(2))
    website_url: Mapped[str | None] = mapped_column(String(2048))
    description: Mapped[str] = mapped_column(Text, default="", server_default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")

    __table_args__ = (
        Index("uq_universities_slug_live", "slug", unique=True, postgresql_where=text("deleted_at IS NULL")),
    )


class Program(IdMixin, TimestampMixin, SoftDeleteMixin, Base):
    __tablename__ = "programs"

    university_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("universities.id"))
    name: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column(String(120))
    # Short, unguessable-enough id used inside share links (`/r/{code}-{short_code}`).
    short_code: Mapped[str] = mapped_column(String(8))
    country: Mapped[str] = mapped_column(String(2))
    level: Mapped[str] = mapped_column(String(20))
    intakes: Mapped[list[date]] = mapped_column(ARRAY(Date), default=list, server_default="{}")
    fee_amount: Mapped[int] = mapped_column(BigInteger)
    fee_currency: Mapped[str] = mapped_column(String(3))
    description: Mapped[str] = mapped_column(Text, default="", server_default="")
    landing_url: Mapped[str] = mapped_column(String(2048))
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")
    # Program name + university name, kept by the service; searched with pg_trgm (typo-tolerant).
    search_text: Mapped[str] = mapped_column(Text, default="", server_default="")

    __table_args__ = (
        CheckConstraint(f"level IN ({_in(ProgramLevel)})", name="level_known"),
        CheckConstraint("fee_amount >= 0", name="fee_not_negative"),
        Index("uq_programs_short_code", "short_code", unique=True),
        Index(
            "uq_programs_university_slug_live",
            "university_id",
            "slug",
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
        ),
        Index("ix_programs_country_level", "country", "level"),
        Index(
            "ix_programs_search_text_trgm",
            "search_text",
            postgresql_using="gin",
            postgresql_ops={"search_text": "gin_trgm_ops"},
        ),
    )


class Campaign(IdMixin, TimestampMixin, Base):
    """Reward rules (added by the rewards slice, keyed by campaign id) apply to the attached programs
    inside [starts_at, ends_at) while the campaign is active, to eligible referrers, within budget."""

    __tablename__ = "campaigns"

    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="", server_default="")
    state: Mapped[str] = mapped_column(String(10), default=CampaignState.draft.value, server_default="draft")
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime | None]
    currency: Mapped[str] = mapped_column(String(3))
    budget_total_amount: Mapped[int | None] = mapped_column(BigInteger)  # None: no total cap
    per_referrer_amount: Mapped[int | None] = mapped_column(BigInteger)  # None: no per-referrer cap
    per_referrer_period: Mapped[str | None] = mapped_column(String(10))
    eligible_countries: Mapped[list[str]] = mapped_column(ARRAY(String(2)), default=list, server_default="{}")
    require_email_verified: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    require_phone_verified: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    required_kyc_status: Mapped[str | None] = mapped_column(String(20))
    min_member_level: Mapped[int | None] = mapped_column(SmallInteger)  # None: any level
    attribution_window_days: Mapped[int] = mapped_column(SmallInteger, default=30, server_default="30")
    activated_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint(f"state IN ({_in(CampaignState)})", name="state_known"),
        CheckConstraint("ends_at IS NULL OR ends_at > starts_at", name="window_ordered"),
        CheckConstraint(
            "budget_total_amount IS NULL OR budget_total_amount >= 0", name="budget_not_negative"
        ),
        CheckConstraint("per_referrer_amount IS NULL OR per_referrer_amount >= 0", name="cap_not_negative"),
        CheckConstraint(
            f"per_referrer_period IS NULL OR per_referrer_period IN ({_in(BudgetPeriod)})",
            name="period_known",
        ),
        CheckConstraint(
            "(per_referrer_amount IS NULL) = (per_referrer_period IS NULL)", name="cap_has_period"
        ),
        CheckConstraint("attribution_window_days BETWEEN 1 AND 365", name="window_days_bounded"),
        CheckConstraint(
            f"min_member_level IS NULL OR min_member_level BETWEEN 1 AND {MAX_MEMBER_LEVEL}",
            name="min_member_level_bounded",
        ),
        Index("ix_campaigns_state_starts_at", "state", "starts_at"),
    )


class CampaignProgram(Base):
    __tablename__ = "campaign_programs"

    campaign_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    program_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("programs.id"), primary_key=True)

    __table_args__ = (Index("ix_campaign_programs_program_id", "program_id"),)


class VanityCode(IdMixin, Base):
    """A member's chosen code. `code_key` is its Crockford-normalized form (the form sign-up codes are
    stored in), unique over every row ever made, so a released code can never be taken over."""

    __tablename__ = "vanity_codes"

    member_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    code: Mapped[str] = mapped_column(String(20))
    code_key: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(10), default=VanityStatus.active.value)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)
    replaced_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    revoked_by: Mapped[uuid.UUID | None]
    revoked_reason: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (
        CheckConstraint(f"status IN ({_in(VanityStatus)})", name="status_known"),
        Index("uq_vanity_codes_code_key", "code_key", unique=True),
        Index(
            "uq_vanity_codes_member_active",
            "member_id",
            unique=True,
            postgresql_where=text("status = 'active'"),
        ),
    )


class MemberDevice(Base):
    """Device ids seen on a member's account (keyed hash), for the self-referral check."""

    __tablename__ = "member_devices"

    member_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), primary_key=True)
    device_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    first_seen_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)

    __table_args__ = (Index("ix_member_devices_device_hash", "device_hash"),)


class Click(Base):
    """One visit of a share link. Partitioned by month on `clicked_at` (partitions are made by the
    flusher on demand; retention drops old ones). Written only by the batch flusher, never on the
    redirect path. `id` is the click id in the visitor's cookie."""

    __tablename__ = "clicks"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    clicked_at: Mapped[datetime] = mapped_column(primary_key=True)
    program_id: Mapped[uuid.UUID]
    member_id: Mapped[uuid.UUID]
    code: Mapped[str] = mapped_column(String(20))
    ip_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    referer: Mapped[str | None] = mapped_column(String(1024))
    country: Mapped[str | None] = mapped_column(String(2))
    is_bot: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (
        Index("ix_clicks_member_id_clicked_at", "member_id", "clicked_at"),
        {"postgresql_partition_by": "RANGE (clicked_at)"},
    )


class Attribution(IdMixin, Base):
    """A sign-up credited to a referrer (one per new member). The lifecycle slice turns it into a
    referral in state signed_up."""

    __tablename__ = "attributions"

    referee_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    member_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))  # the referrer
    program_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("programs.id"))
    campaign_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("campaigns.id"))
    click_id: Mapped[uuid.UUID | None]
    via: Mapped[str] = mapped_column(String(10))
    code: Mapped[str | None] = mapped_column(String(20))
    attributed_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)

    __table_args__ = (
        CheckConstraint(f"via IN ({_in(AttributionVia)})", name="via_known"),
        CheckConstraint("referee_id <> member_id", name="not_self"),
        Index("uq_attributions_referee_id", "referee_id", unique=True),
        Index("ix_attributions_member_id", "member_id"),
    )
