"""Request and response models of referrals (member and staff)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from referloop.analytics.schemas import MemberFunnelOut
from referloop.core.validation import Email, Phone, StrictModel
from referloop.referrals.lifecycle.models import ActorType, ReferralSource, ReferralState
from referloop.referrals.rewards.schemas import RewardOut
from referloop.referrals.schemas import Money

LeadName = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=r"^[^\x00]+$")]


class InviteRequest(StrictModel):
    program_id: uuid.UUID
    name: LeadName = Field(description="The person's name (they are shown to you as first name and initial).")
    email: Email | None = Field(default=None, description="The invitation is sent here.")
    phone: Phone | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "program_id": "0193a1c2-7a53-7c2e-9d1a-0b6f4f3a1e12",
                    "name": "Ravi Kumar",
                    "email": "ravi@example.com",
                }
            ]
        }
    )

    @model_validator(mode="after")
    def _reachable(self) -> InviteRequest:
        if not self.email and not self.phone:
            raise ValueError("Give the person's email address, phone number, or both.")
        return self


class ProgramRef(BaseModel):
    id: uuid.UUID
    name: str
    university_name: str


class RefereeOut(BaseModel):
    name: str = Field(description="First name and initial only.")
    registered: bool = Field(description="Whether they have an account.")


class ReferralOut(BaseModel):
    id: uuid.UUID
    state: ReferralState
    source: ReferralSource
    program: ProgramRef | None = Field(
        description="Null for a sign-up through a plain code, until they apply."
    )
    campaign_id: uuid.UUID | None
    referee: RefereeOut
    invited_at: datetime | None
    signed_up_at: datetime | None
    applied_at: datetime | None
    enrolled_at: datetime | None
    rewarded_at: datetime | None
    expires_at: datetime | None = Field(description="An invitation not taken up by then expires.")
    state_changed_at: datetime
    created_at: datetime


class TimelineItem(BaseModel):
    from_state: ReferralState | None
    to_state: ReferralState
    actor: ActorType
    reason: str | None = Field(description="Shown for changes made by the system or a partner.")
    occurred_at: datetime


class ReferralDetail(ReferralOut):
    timeline: list[TimelineItem]
    rewards: list[RewardOut] = Field(description="Your rewards for this referral, one per milestone.")


class Earnings(BaseModel):
    currency: str
    pending: Money
    available: Money


class ReferralStats(BaseModel):
    total: int
    by_state: dict[ReferralState, int]
    converted: int = Field(description="Referrals that enrolled (and were not reversed).")
    conversion_rate: float = Field(description="converted / total, 0 when there are none.")
    earnings: list[Earnings] = Field(description="Your wallet's pending and available balances.")
    owed: list[Money] = Field(description="What clawbacks left you owing, paid from later rewards.")
    funnel: MemberFunnelOut = Field(
        description="Your funnel over the requested range (default: the last 30 UTC days): clicks on "
        "your share links -> sign-ups -> applications -> enrolments -> rewarded, per day or week, with "
        "conversion rates and median times between steps. Read from rollups kept current by the worker "
        "(clicks lag by about two minutes); counts are activity in each period, not cohorts. The fields "
        "above are all time and ignore the filters."
    )


class StaffReferralOut(ReferralOut):
    member_id: uuid.UUID
    referee_id: uuid.UUID | None
    held_from_state: ReferralState | None
    allowed_transitions: list[str]
    university_id: uuid.UUID | None


class StaffReferralDetail(StaffReferralOut):
    timeline: list[TimelineItem]
    rewards: list[RewardOut]


class FraudHoldRequest(StrictModel):
    reason: Reason
