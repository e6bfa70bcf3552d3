"""Request and response models of the referrals API."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    WithJsonSchema,
    model_validator,
)

from referloop.core.validation import Instant, StrictModel
from referloop.identity.models import MAX_MEMBER_LEVEL, KycStatus
from referloop.referrals.models import BudgetPeriod, CampaignState, ProgramLevel

Slug = Annotated[str, StringConstraints(min_length=2, max_length=100, pattern=r"^[a-z0-9]+(?:-[a-z0-9]+)*$")]
# Text that PostgreSQL can store: no NUL character.
NO_NUL = r"^[^\x00]*$"
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)]
Description = Annotated[str, StringConstraints(max_length=10_000, pattern=NO_NUL)]
CountryCode = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2}$", to_upper=True)]
CurrencyCode = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{3}$", to_upper=True)]
ReasonText = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)]


_HTTP_URL: TypeAdapter[AnyHttpUrl] = TypeAdapter(AnyHttpUrl)


def _http_url(value: str) -> str:
    text = str(_HTTP_URL.validate_python(value))
    if len(text) > 2048:
        raise ValueError("URLs are limited to 2048 characters.")
    return text


Url = Annotated[
    str,
    StringConstraints(max_length=2048),
    AfterValidator(_http_url),
    WithJsonSchema({"type": "string", "format": "uri"}),
]

VANITY_MIN, VANITY_MAX = 4, 20
VanityCodeText = Annotated[
    str, StringConstraints(min_length=VANITY_MIN, max_length=VANITY_MAX, pattern=r"^[A-Za-z0-9]+$")
]


class Money(BaseModel):
    """An amount in minor units (paise, cents) of an ISO 4217 currency."""

    model_config = ConfigDict(extra="forbid")

    amount: StrictInt = Field(ge=0, le=10**15)
    currency: CurrencyCode


# -- universities ---------------------------------------------------------------------------------


class UniversityCreate(StrictModel):
    name: Name
    slug: Slug
    country: CountryCode
    website_url: Url | None = None
    description: Description = ""
    active: StrictBool = True

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "Lakeside University",
                    "slug": "lakeside",
                    "country": "IN",
                    "website_url": "https://lakeside.example.edu",
                    "description": "Public research university.",
                }
            ]
        }
    )


class UniversityUpdate(StrictModel):
    name: Name | None = None
    slug: Slug | None = None
    country: CountryCode | None = None
    website_url: Url | None = None
    description: Description | None = None
    active: StrictBool | None = None


class UniversityRef(BaseModel):
    id: uuid.UUID
    name: str
    slug: str


class UniversityOut(BaseModel):
    id: uuid.UUID
    name: str
    slug: str
    country: str
    website_url: str | None
    description: str
    active: bool
    retired: bool
    created_at: datetime
    updated_at: datetime


# -- programs -------------------------------------------------------------------------------------


class ProgramCreate(StrictModel):
    university_id: uuid.UUID
    name: Name
    slug: Slug
    country: CountryCode | None = Field(default=None, description="Defaults to the university's country.")
    level: ProgramLevel
    intakes: list[date] = Field(default_factory=list, max_length=24, description="Start dates of intakes.")
    fee: Money
    description: Description = ""
    landing_url: Url = Field(
        description="Where share links send visitors (attribution parameters are added)."
    )
    active: StrictBool = True

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "university_id": "0193a1c2-7a53-7c2e-9d1a-0b6f4f3a1e11",
                    "name": "BSc Computer Science",
                    "slug": "bsc-computer-science",
                    "level": "undergraduate",
                    "intakes": ["2027-07-01", "2028-01-01"],
                    "fee": {"amount": 45000000, "currency": "INR"},
                    "landing_url": "https://lakeside.example.edu/bsc-cs",
                }
            ]
        }
    )


class ProgramUpdate(StrictModel):
    name: Name | None = None
    slug: Slug | None = None
    country: CountryCode | None = None
    level: ProgramLevel | None = None
    intakes: list[date] | None = Field(default=None, max_length=24)
    fee: Money | None = None
    description: Description | None = None
    landing_url: Url | None = None
    active: StrictBool | None = None


class ProgramOut(BaseModel):
    id: uuid.UUID
    university: UniversityRef
    name: str
    slug: str
    short_code: str
    country: str
    level: ProgramLevel
    intakes: list[date]
    fee: Money
    description: str
    landing_url: str
    active: bool
    created_at: datetime
    updated_at: datetime


class StaffProgramOut(ProgramOut):
    retired: bool


# -- campaigns ------------------------------------------------------------------------------------


class ReferrerCap(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: Money
    period: BudgetPeriod


class Eligibility(BaseModel):
    model_config = ConfigDict(extra="forbid")

    countries: list[CountryCode] = Field(
        default_factory=list, max_length=250, description="Referrer's country; empty means every country."
    )
    require_email_verified: StrictBool = False
    require_phone_verified: StrictBool = False
    kyc_status: KycStatus | None = Field(default=None, description="The referrer's KYC status must be this.")
    min_member_level: StrictInt | None = Field(
        default=None,
        ge=1,
        le=MAX_MEMBER_LEVEL,
        description="The referrer's member level must be at least this; null for any level.",
    )


class CampaignCreate(StrictModel):
    name: Name
    description: Description = ""
    program_ids: list[uuid.UUID] = Field(min_length=1, max_length=500)
    starts_at: Instant
    ends_at: Instant | None = None
    priority: StrictInt = Field(
        default=0, ge=-1000, le=1000, description="Higher wins when campaigns overlap."
    )
    currency: CurrencyCode
    budget_total: Money | None = Field(default=None, description="Total reward budget; null for none.")
    per_referrer_cap: ReferrerCap | None = None
    eligibility: Eligibility = Field(default_factory=Eligibility)
    attribution_window_days: StrictInt = Field(default=30, ge=1, le=365)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "Autumn intake",
                    "program_ids": ["0193a1c2-7a53-7c2e-9d1a-0b6f4f3a1e12"],
                    "starts_at": "2027-01-01T00:00:00Z",
                    "ends_at": "2027-06-30T00:00:00Z",
                    "currency": "INR",
                    "budget_total": {"amount": 50000000, "currency": "INR"},
                    "per_referrer_cap": {"amount": {"amount": 1000000, "currency": "INR"}, "period": "month"},
                    "eligibility": {"countries": ["IN"], "require_email_verified": True},
                }
            ]
        }
    )

    @model_validator(mode="after")
    def _consistent(self) -> CampaignCreate:
        _check_campaign_fields(
            self.starts_at, self.ends_at, self.currency, self.budget_total, self.per_referrer_cap
        )
        return self


class CampaignUpdate(StrictModel):
    name: Name | None = None
    description: Description | None = None
    program_ids: list[uuid.UUID] | None = Field(default=None, min_length=1, max_length=500)
    starts_at: Instant | None = None
    ends_at: Instant | None = None
    priority: StrictInt | None = Field(default=None, ge=-1000, le=1000)
    budget_total: Money | None = None
    per_referrer_cap: ReferrerCap | None = None
    eligibility: Eligibility | None = Field(
        default=None, description="Replaces the whole eligibility; fields left out take their defaults."
    )
    attribution_window_days: StrictInt | None = Field(default=None, ge=1, le=365)


def _check_campaign_fields(
    starts_at: datetime,
    ends_at: datetime | None,
    currency: str,
    budget_total: Money | None,
    cap: ReferrerCap | None,
) -> None:
    if starts_at.tzinfo is None or (ends_at is not None and ends_at.tzinfo is None):
        raise ValueError("Give times with a time zone, for example 2027-01-01T00:00:00Z.")
    if ends_at is not None and ends_at <= starts_at:
        raise ValueError("ends_at must be after starts_at.")
    for money in (budget_total, cap.amount if cap else None):
        if money is not None and money.currency != currency:
            raise ValueError("Budgets must be in the campaign's currency.")


class CampaignStateChange(StrictModel):
    state: CampaignState


class CampaignOut(BaseModel):
    id: uuid.UUID
    name: str
    description: str
    state: CampaignState
    allowed_transitions: list[CampaignState]
    priority: int
    starts_at: datetime
    ends_at: datetime | None
    program_ids: list[uuid.UUID]
    currency: str
    budget_total: Money | None
    per_referrer_cap: ReferrerCap | None
    eligibility: Eligibility
    attribution_window_days: int
    activated_at: datetime | None
    ended_at: datetime | None
    created_at: datetime
    updated_at: datetime


# -- codes and links ------------------------------------------------------------------------------


class VanityCodeIn(StrictModel):
    code: VanityCodeText = Field(description="4 to 20 letters and digits; case does not matter.")

    model_config = ConfigDict(json_schema_extra={"examples": [{"code": "AshaStudies"}]})


class VanityCodeOut(BaseModel):
    code: str
    status: str
    created_at: datetime


class VanityRevoke(StrictModel):
    reason: ReasonText


class LinkOut(BaseModel):
    program_id: uuid.UUID
    program_name: str
    university_name: str
    code: str
    slug: str
    url: str


class LinkPage(BaseModel):
    code: str = Field(description="The code your links carry: your vanity code if you chose one.")
    items: list[LinkOut]
    next_cursor: str | None = None
