"""Rollup tables of the funnel.

- `analytics_milestones`: one row per referral and step it reached (primary key `(referral_id, step)`).
  Its insert is what drives the daily counters, so a replayed or duplicated event never counts twice,
  and the earliest known time of a step wins whatever order events arrive in. Medians of the time
  between steps are computed from it (it holds referrals, never clicks).
- `analytics_funnel_daily`: counters per UTC day, program, campaign and referrer (university
  denormalized for filtering). Clicks are added by the periodic click job, steps by the milestones.
- `analytics_watermarks`: how far the click job has read the `clicks` table."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Boolean, CheckConstraint, Date, Index, String, func
from sqlalchemy.orm import Mapped, mapped_column

from referloop.core.db import Base, utcnow
from referloop.referrals.models import Click


class Step(StrEnum):
    """What a referral reached. The funnel is FUNNEL (in order); the others are counted beside it."""

    invited = "invited"
    signed_up = "signed_up"
    applied = "applied"
    enrolled = "enrolled"
    rewarded = "rewarded"
    rejected = "rejected"
    expired = "expired"
    reversed = "reversed"
    fraud_hold = "fraud_hold"


# Reaching a step of the funnel implies the earlier ones (a partner may report an enrolment for a
# lead we never saw apply): those are recorded as implied, so the funnel never narrows upwards.
FUNNEL: tuple[Step, ...] = (Step.signed_up, Step.applied, Step.enrolled, Step.rewarded)


def _in(values: type[StrEnum]) -> str:
    return ",".join(f"'{v.value}'" for v in values)


class Milestone(Base):
    __tablename__ = "analytics_milestones"

    referral_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    step: Mapped[str] = mapped_column(String(16), primary_key=True)
    at: Mapped[datetime]
    day: Mapped[date] = mapped_column(Date)  # UTC day of `at`: the daily row this milestone counts in
    implied: Mapped[bool] = mapped_column(Boolean, default=False)
    referrer_id: Mapped[uuid.UUID]
    program_id: Mapped[uuid.UUID | None]  # null: a sign-up credited by code, for no program
    university_id: Mapped[uuid.UUID | None]
    campaign_id: Mapped[uuid.UUID | None]

    __table_args__ = (
        CheckConstraint(f"step IN ({_in(Step)})", name="step_known"),
        Index("ix_analytics_milestones_day_step", "day", "step"),
        Index("ix_analytics_milestones_referrer_id_day", "referrer_id", "day"),
        Index("ix_analytics_milestones_program_id_day", "program_id", "day"),
        Index("ix_analytics_milestones_campaign_id_day", "campaign_id", "day"),
        Index("ix_analytics_milestones_university_id_day", "university_id", "day"),
    )


class FunnelDaily(Base):
    __tablename__ = "analytics_funnel_daily"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    day: Mapped[date] = mapped_column(Date)
    program_id: Mapped[uuid.UUID | None]  # null: referrals for no program (clicks always have one)
    campaign_id: Mapped[uuid.UUID | None]  # null: no campaign applied
    referrer_id: Mapped[uuid.UUID]
    university_id: Mapped[uuid.UUID | None]
    clicks: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    bot_clicks: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    invited: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    signed_up: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    applied: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    enrolled: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    rewarded: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    rejected: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    expired: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    reversed: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    fraud_hold: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    __table_args__ = (
        # One row per key; a missing program or campaign is a key value like any other (NULLS NOT DISTINCT).
        Index(
            "uq_analytics_funnel_daily_key",
            "day",
            "program_id",
            "campaign_id",
            "referrer_id",
            unique=True,
            postgresql_nulls_not_distinct=True,
        ),
        Index("ix_analytics_funnel_daily_referrer_id_day", "referrer_id", "day"),
        Index("ix_analytics_funnel_daily_program_id_day", "program_id", "day"),
        Index("ix_analytics_funnel_daily_campaign_id_day", "campaign_id", "day"),
        Index("ix_analytics_funnel_daily_university_id_day", "university_id", "day"),
    )


class Watermark(Base):
    __tablename__ = "analytics_watermarks"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    value: Mapped[datetime]
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)


# The click job reads `clicks` by time range. A BRIN index is nearly free to keep on an append-mostly
# table (clicks arrive roughly in time order) and lets each run read only the pages of its range
# instead of the whole month's partition. Declared here (the analytics reader needs it), on the
# referrals domain's table; created on the partitioned parent, so every partition gets it.
Index("ix_clicks_clicked_at_brin", Click.clicked_at, postgresql_using="brin")
