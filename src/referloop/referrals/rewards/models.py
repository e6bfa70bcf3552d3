"""Tables of rewards: rules, one row per (referral, milestone, role), and the spent counters.

Exactly once: `rewards` is unique on (referral_id, milestone, role), so a milestone queues each
role's reward once however often it is reported; the ledger entry is keyed by the same triple.
Budgets: `campaign_budgets.spent` and `reward_counters.value` only grow through guarded statements
(`... WHERE value + :x <= :limit`), so a limit is enforced by the database, never by a Python read."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from referloop.core.db import Base, IdMixin, SoftDeleteMixin, TimestampMixin, utcnow
from referloop.referrals.models import BudgetPeriod

# Notified (on commit) by a trigger on `rewards` when rewards are queued or asked back: it wakes the
# worker's reward job (core/wakeups.py). Migration 0016 names it too.
REWARDS_CHANNEL = "referloop_rewards"


class Milestone(StrEnum):
    signed_up = "signed_up"
    applied = "applied"
    enrolled = "enrolled"


class RewardRole(StrEnum):
    referrer = "referrer"
    referee = "referee"


class RuleKind(StrEnum):
    fixed = "fixed"  # `amount` (or the tier's amount) in the campaign's currency
    percent = "percent"  # `percent_bps` basis points of the fee the partner reported


class RewardStatus(StrEnum):
    queued = "queued"  # the milestone happened; the worker has not granted it yet
    pending = "pending"  # in the member's pending balance until `release_at`
    released = "released"  # moved to the member's available balance
    voided = "voided"  # reversed inside the hold: the pending amount went back
    clawed_back = "clawed_back"  # reversed after release: taken back (the rest is a receivable)
    skipped = "skipped"  # no reward; `reason` says why (budget spent, cap reached...)


class SkipReason(StrEnum):
    budget_exhausted = "budget_exhausted"
    referrer_cap_reached = "referrer_cap_reached"
    rule_cap_reached = "rule_cap_reached"
    referee_not_registered = "referee_not_registered"
    enrolment_cancelled = "enrolment_cancelled"
    rule_withdrawn = "rule_withdrawn"
    no_fee = "no_fee"
    fee_currency_mismatch = "fee_currency_mismatch"
    zero_amount = "zero_amount"


SKIP_REASON_TEXT: dict[SkipReason, str] = {
    SkipReason.budget_exhausted: "The campaign's reward budget was spent.",
    SkipReason.referrer_cap_reached: "You reached this campaign's reward limit for the period.",
    SkipReason.rule_cap_reached: "You reached the number of rewards this campaign pays per period.",
    SkipReason.referee_not_registered: "The person you referred has no account, so cannot be rewarded.",
    SkipReason.enrolment_cancelled: "The enrolment was cancelled.",
    SkipReason.rule_withdrawn: "The campaign no longer pays this reward.",
    SkipReason.no_fee: "No fee was reported, so a percentage reward cannot be computed.",
    SkipReason.fee_currency_mismatch: "The fee was reported in another currency than the campaign's.",
    SkipReason.zero_amount: "The reward came to zero.",
}


def _in(values: type[StrEnum]) -> str:
    return ",".join(f"'{v.value}'" for v in values)


class RewardRule(IdMixin, TimestampMixin, SoftDeleteMixin, Base):
    """What a campaign pays one side (referrer or referee) at one milestone.

    `tiers` (referrer rules at `enrolled` only): `[{"from": 1, "amount": 100000}, {"from": 6, ...}]`,
    the referrer's n-th enrolment in the `period` is paid by the tier with the greatest `from` <= n
    (for percentage rules a tier gives `percent_bps`). `max_per_referrer`: at most that many rewards
    of this rule per referrer per `period`."""

    __tablename__ = "reward_rules"

    campaign_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("campaigns.id"))
    milestone: Mapped[str] = mapped_column(String(10))
    role: Mapped[str] = mapped_column(String(10))
    kind: Mapped[str] = mapped_column(String(10))
    amount: Mapped[int | None] = mapped_column(BigInteger)
    percent_bps: Mapped[int | None] = mapped_column(Integer)
    max_amount: Mapped[int | None] = mapped_column(BigInteger)  # a ceiling for percentage rewards
    tiers: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list, server_default="[]")
    period: Mapped[str | None] = mapped_column(String(10))
    max_per_referrer: Mapped[int | None] = mapped_column(Integer)
    hold_days: Mapped[int] = mapped_column(SmallInteger, default=30, server_default="30")

    __table_args__ = (
        CheckConstraint(f"milestone IN ({_in(Milestone)})", name="milestone_known"),
        CheckConstraint(f"role IN ({_in(RewardRole)})", name="role_known"),
        CheckConstraint(f"kind IN ({_in(RuleKind)})", name="kind_known"),
        CheckConstraint(f"period IS NULL OR period IN ({_in(BudgetPeriod)})", name="period_known"),
        CheckConstraint(
            "(kind = 'fixed' AND amount IS NOT NULL AND amount >= 0 AND percent_bps IS NULL)"
            " OR (kind = 'percent' AND percent_bps IS NOT NULL AND percent_bps BETWEEN 0 AND 10000"
            " AND amount IS NULL)",
            name="kind_fields",
        ),
        CheckConstraint("max_amount IS NULL OR max_amount >= 0", name="max_amount_not_negative"),
        CheckConstraint(
            "max_per_referrer IS NULL OR max_per_referrer >= 1", name="max_per_referrer_positive"
        ),
        CheckConstraint("hold_days BETWEEN 0 AND 365", name="hold_days_bounded"),
        Index(
            "uq_reward_rules_campaign_milestone_role_live",
            "campaign_id",
            "milestone",
            "role",
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )


class Reward(IdMixin, TimestampMixin, Base):
    __tablename__ = "rewards"

    referral_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("referrals.id"))
    referrer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    member_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))  # who gets it
    role: Mapped[str] = mapped_column(String(10))
    milestone: Mapped[str] = mapped_column(String(10))
    campaign_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("campaigns.id"))
    rule_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("reward_rules.id"))
    program_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("programs.id"))
    status: Mapped[str] = mapped_column(String(12), default=RewardStatus.queued.value)
    amount: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str | None] = mapped_column(String(40))  # a SkipReason when skipped
    # How the amount was reached ("tier from 6", "7.5 % of 4500000"), for the member and support.
    basis: Mapped[str | None] = mapped_column(String(200))
    ledger_transfer_id: Mapped[uuid.UUID | None]
    reached_at: Mapped[datetime]  # when the milestone happened
    release_at: Mapped[datetime | None]
    released_at: Mapped[datetime | None]
    reversal_requested_at: Mapped[datetime | None]
    reversed_at: Mapped[datetime | None]
    # The per-referrer counters this reward was charged to, so a void gives them back:
    # [{"counter": "spend:month", "period_start": "...", "delta": 100000}].
    charged_counters: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list, server_default="[]")
    clawed_back_amount: Mapped[int | None] = mapped_column(BigInteger)  # taken from available at once
    receivable_amount: Mapped[int | None] = mapped_column(BigInteger)  # the rest, owed

    __table_args__ = (
        CheckConstraint(f"role IN ({_in(RewardRole)})", name="role_known"),
        CheckConstraint(f"milestone IN ({_in(Milestone)})", name="milestone_known"),
        CheckConstraint(f"status IN ({_in(RewardStatus)})", name="status_known"),
        CheckConstraint("amount IS NULL OR amount > 0", name="amount_positive"),
        CheckConstraint("(status = 'skipped') = (reason IS NOT NULL)", name="skipped_has_reason"),
        CheckConstraint(
            "status NOT IN ('pending','released','voided','clawed_back')"
            " OR (amount IS NOT NULL AND ledger_transfer_id IS NOT NULL AND member_id IS NOT NULL)",
            name="granted_has_transfer",
        ),
        Index("uq_rewards_referral_milestone_role", "referral_id", "milestone", "role", unique=True),
        Index("ix_rewards_member_id", "member_id", "id", postgresql_where=text("member_id IS NOT NULL")),
        Index("ix_rewards_referrer_id", "referrer_id"),
        Index("ix_rewards_queued", "reached_at", "id", postgresql_where=text("status = 'queued'")),
        Index("ix_rewards_release_due", "release_at", postgresql_where=text("status = 'pending'")),
        Index(
            "ix_rewards_reversal_due",
            "reversal_requested_at",
            postgresql_where=text(
                "reversal_requested_at IS NOT NULL AND status IN ('queued','pending','released')"
            ),
        ),
    )


class CampaignBudget(Base):
    """What a campaign has paid out (pending or released) against `campaigns.budget_total_amount`."""

    __tablename__ = "campaign_budgets"

    campaign_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("campaigns.id"), primary_key=True)
    spent: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    rewards: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)

    __table_args__ = (
        CheckConstraint("spent >= 0", name="spent_not_negative"),
        CheckConstraint("rewards >= 0", name="rewards_not_negative"),
    )


class RewardCounter(Base):
    """Per referrer, campaign and period: `spend:<period>` (amount against the campaign's per-referrer
    cap), `enrolments:<period>` (for tiers), `rule:<id>` (rewards of one rule, for its count cap).
    `period_start` comes from `budget.period_start`; for the `campaign` period it is a fixed instant
    (`budget.CAMPAIGN_PERIOD_START`), never the editable `campaigns.starts_at`."""

    __tablename__ = "reward_counters"

    campaign_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("campaigns.id"), primary_key=True)
    member_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), primary_key=True)
    counter: Mapped[str] = mapped_column(String(60), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    __table_args__ = (CheckConstraint("value >= 0", name="value_not_negative"),)
