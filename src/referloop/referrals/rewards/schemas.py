"""Request and response models of rewards (rules for staff, rewards as members see them)."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from referloop.core.validation import StrictModel
from referloop.referrals.models import BudgetPeriod
from referloop.referrals.rewards.models import Milestone, RewardRole, RewardStatus, RuleKind
from referloop.referrals.schemas import Money

MAX_TIERS = 20


class Tier(BaseModel):
    """From the referrer's `from`-th enrolment in the period on, pay `amount` (fixed rules) or
    `percent_bps` (percentage rules)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: StrictInt = Field(alias="from", ge=1, le=1_000_000)
    amount: Money | None = None
    percent_bps: StrictInt | None = Field(default=None, ge=0, le=10_000)


class _RuleFields(StrictModel):
    kind: RuleKind
    amount: Money | None = Field(default=None, description="Fixed rules: the amount paid.")
    percent_bps: StrictInt | None = Field(
        default=None, ge=0, le=10_000, description="Percentage rules: basis points of the reported fee."
    )
    max_amount: Money | None = Field(default=None, description="Percentage rules: at most this much.")
    tiers: list[Tier] = Field(
        default_factory=list,
        max_length=MAX_TIERS,
        description="Referrer rules at `enrolled` only: amounts by the referrer's enrolments in `period`.",
    )
    period: BudgetPeriod | None = Field(
        default=None, description="The period tiers and `max_per_referrer` count in."
    )
    max_per_referrer: StrictInt | None = Field(
        default=None, ge=1, le=1_000_000, description="At most this many rewards per referrer per period."
    )
    hold_days: StrictInt = Field(
        default=30, ge=0, le=365, description="Days after the milestone before the reward is available."
    )

    @model_validator(mode="after")
    def _consistent(self) -> _RuleFields:
        check_rule_shape(self.kind, self.amount, self.percent_bps, self.max_amount, self.tiers)
        if (self.tiers or self.max_per_referrer is not None) and self.period is None:
            raise ValueError("Tiers and max_per_referrer need a period.")
        return self


def check_rule_shape(
    kind: RuleKind,
    amount: Money | None,
    percent_bps: int | None,
    max_amount: Money | None,
    tiers: list[Tier],
) -> None:
    if kind is RuleKind.fixed:
        if amount is None or percent_bps is not None or max_amount is not None:
            raise ValueError("A fixed rule has an amount (and no percent_bps or max_amount).")
        if any(t.amount is None or t.percent_bps is not None for t in tiers):
            raise ValueError("The tiers of a fixed rule each have an amount.")
    else:
        if percent_bps is None or amount is not None:
            raise ValueError("A percentage rule has percent_bps (and no amount).")
        if any(t.percent_bps is None or t.amount is not None for t in tiers):
            raise ValueError("The tiers of a percentage rule each have percent_bps.")
    if len({t.from_ for t in tiers}) != len(tiers):
        raise ValueError("Tiers start at different enrolment numbers.")


class RuleCreate(_RuleFields):
    milestone: Milestone
    role: RewardRole

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "milestone": "enrolled",
                    "role": "referrer",
                    "kind": "fixed",
                    "amount": {"amount": 100000, "currency": "INR"},
                    "tiers": [
                        {"from": 1, "amount": {"amount": 100000, "currency": "INR"}},
                        {"from": 6, "amount": {"amount": 150000, "currency": "INR"}},
                    ],
                    "period": "month",
                    "hold_days": 30,
                }
            ]
        }
    )


class RuleUpdate(_RuleFields):
    """Replaces the rule's terms (milestone and role stay). Rewards already granted keep theirs."""


class RuleOut(BaseModel):
    id: uuid.UUID
    campaign_id: uuid.UUID
    milestone: Milestone
    role: RewardRole
    kind: RuleKind
    amount: Money | None
    percent_bps: int | None
    max_amount: Money | None
    tiers: list[Tier]
    period: BudgetPeriod | None
    max_per_referrer: int | None
    hold_days: int
    created_at: datetime
    updated_at: datetime

    model_config = ConfigDict(populate_by_name=True)


class RuleList(BaseModel):
    items: list[RuleOut]


class BudgetOut(BaseModel):
    campaign_id: uuid.UUID
    budget_total: Money | None
    spent: Money
    remaining: Money | None
    rewards: int = Field(description="Rewards charged to the budget (pending or released).")


class RewardOut(BaseModel):
    id: uuid.UUID
    milestone: Milestone
    role: RewardRole
    status: RewardStatus
    amount: Money | None
    reason: str | None = Field(description="Why there is no reward (`budget_exhausted`...), when skipped.")
    reason_text: str | None = Field(description="The same, in words.")
    basis: str | None = Field(description="How the amount was reached.")
    release_at: datetime | None
    released_at: datetime | None
    reversed_at: datetime | None
    receivable: Money | None = Field(description="What a clawback left owing (paid from later rewards).")
