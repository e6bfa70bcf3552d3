"""Request and response models of the partner API and of the staff routes for partner keys."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

from referloop.config import valid_rate_limit
from referloop.core.errors import FieldError
from referloop.core.validation import AwareInstant, Email, Phone, StrictModel
from referloop.referrals.lifecycle.models import ActorType, ReferralState
from referloop.referrals.lifecycle.schemas import RefereeOut

MAX_BATCH_ITEMS = 1000
OUTCOME_TYPES = (
    "application_submitted",
    "application_accepted",
    "application_rejected",
    "enrolled",
    "enrolment_cancelled",
)
OutcomeType = Literal[
    "application_submitted", "application_accepted", "application_rejected", "enrolled", "enrolment_cancelled"
]
ItemStatus = Literal["applied", "duplicate", "stale", "not_found", "refused", "invalid", "error"]
ITEM_STATUSES: tuple[str, ...] = get_args(ItemStatus)

# Printable text without control characters (PostgreSQL refuses NUL; the rest has no business in ids).
PrintableId = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
KeyName = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]


RateLimitSpec = Annotated[
    str,
    StringConstraints(
        max_length=40, pattern=r"^[0-9]{1,6} ?(/|per) ?[0-9]{0,4} ?(second|minute|hour|day)s?$"
    ),
    AfterValidator(valid_rate_limit),
]


# -- API keys (staff) -----------------------------------------------------------------------------


class ApiKeyCreate(StrictModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "university_id": "0193a1b2-0000-7000-8000-000000000001",
                    "name": "Admissions CRM",
                    "contact_email": "integrations@lakeside.example.edu",
                    "rate_limit": "600/minute",
                }
            ]
        }
    )

    university_id: uuid.UUID
    name: KeyName
    contact_email: Email = Field(description="Told about the key's webhooks (disabled endpoints)")
    rate_limit: RateLimitSpec | None = Field(default=None, description="Default: the service's setting")


class ApiKeyRotate(StrictModel):
    previous_expires_at: AwareInstant | None = Field(
        default=None,
        description="Until when the old key keeps working (default: in 24 hours; at most 30 days; "
        "now or earlier ends it at once). After it, the old key answers 401.",
    )


class ApiKeyRevoke(StrictModel):
    reason: Reason


class ApiKeyOut(BaseModel):
    id: uuid.UUID
    university_id: uuid.UUID
    name: str
    masked_key: str = Field(
        description="The key's prefix and last four characters; the key is never shown again"
    )
    contact_email: str
    rate_limit: str
    status: Literal["active", "expiring", "expired", "revoked"]
    expires_at: datetime | None
    replaced_by_id: uuid.UUID | None
    revoked_at: datetime | None
    revoked_reason: str | None
    last_used_at: datetime | None
    created_at: datetime


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The API key, shown only now: send it as `Authorization: Bearer <key>`")


class ApiKeyRotated(ApiKeyCreated):
    previous: ApiKeyOut


class PartnerMe(BaseModel):
    key_id: uuid.UUID
    key_name: str
    university_id: uuid.UUID
    rate_limit: str
    expires_at: datetime | None


# -- outcomes -------------------------------------------------------------------------------------


class OutcomeFee(BaseModel):
    """The fee the applicant pays, in minor units (for rewards that are a percentage of it)."""

    model_config = ConfigDict(extra="forbid")

    amount: StrictInt = Field(ge=0, le=10**15)
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{3}$", to_upper=True)]


class OutcomeItem(StrictModel):
    """One outcome. It is matched to a referral by `referral_id`, else `click_id`, else the applicant's
    email or phone (at least one is needed); `program_id` narrows a match by email or phone.
    `external_id` is your own id for this item: the same id and type again is a duplicate."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "external_id": "APP-2027-000123",
                    "type": "enrolled",
                    "occurred_at": "2027-07-01T09:30:00Z",
                    "email": "asha.k@example.com",
                    "fee": {"amount": 45000000, "currency": "INR"},
                }
            ]
        }
    )

    external_id: PrintableId
    type: OutcomeType
    occurred_at: AwareInstant
    referral_id: uuid.UUID | None = None
    click_id: uuid.UUID | None = None
    email: Email | None = None
    phone: Phone | None = None
    program_id: uuid.UUID | None = None
    fee: OutcomeFee | None = None

    @model_validator(mode="after")
    def _matchable(self) -> OutcomeItem:
        if not (self.referral_id or self.click_id or self.email or self.phone):
            raise ValueError("Give referral_id, click_id, email or phone to match the referral.")
        if self.occurred_at > datetime.now(UTC) + timedelta(days=1):
            raise ValueError("occurred_at is in the future.")
        return self


class OutcomeBatch(StrictModel):
    """Up to 1,000 outcomes. Each item is validated and applied on its own: a bad item gets its own
    result (`invalid`, with `errors`) and never fails the batch."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "external_id": "APP-2027-000123",
                            "type": "application_submitted",
                            "occurred_at": "2027-03-01T09:30:00Z",
                            "referral_id": "0193a1b2-0000-7000-8000-0000000000aa",
                        }
                    ]
                }
            ]
        }
    )

    items: Annotated[
        list[Any],
        Field(min_length=1, max_length=MAX_BATCH_ITEMS),
        WithJsonSchema(
            {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_BATCH_ITEMS,
                "items": {"$ref": "#/components/schemas/OutcomeItem"},
            }
        ),
    ]


class OutcomeItemResult(BaseModel):
    index: int = Field(description="Position of the item in the batch (from 0)")
    row: int | None = Field(default=None, description="CSV only: the line of the file (the header is 1)")
    external_id: str | None
    status: ItemStatus = Field(
        description="applied; duplicate (already reported, nothing changed); stale (older than what is "
        "known, recorded only); not_found (no referral of your programs matches); refused (not allowed "
        "in the referral's state); invalid (see errors); error (not applied, retry it)"
    )
    referral_id: uuid.UUID | None = None
    state: str | None = Field(default=None, description="The referral's state after this item")
    reason: str | None = None
    errors: list[FieldError] | None = None


class OutcomeBatchResult(BaseModel):
    received: int
    counts: dict[str, int] = Field(description="Items per status")
    items: list[OutcomeItemResult]


# -- referral lookup ------------------------------------------------------------------------------

_REFERRAL_EXAMPLE: dict[str, Any] = {
    "id": "0193a1b2-0000-7000-8000-0000000000aa",
    "program_id": "0193a1b2-0000-7000-8000-000000000010",
    "state": "applied",
    "referee": {"name": "Asha K.", "registered": True},
    "state_changed_at": "2027-03-01T09:30:00Z",
    "created_at": "2027-02-20T14:05:00Z",
    "updated_at": "2027-03-01T09:30:02Z",
}


class PartnerTimelineItem(BaseModel):
    from_state: ReferralState | None = Field(description="Null for the referral's creation")
    to_state: ReferralState
    actor: ActorType = Field(description="Who made the change: member, staff, partner or system")
    occurred_at: datetime


class PartnerReferralOut(BaseModel):
    """A referral to one of your university's programs. The referee is shown as first name and
    initial only, as to the referrer; match them by your own outcome reports, never by this."""

    model_config = ConfigDict(json_schema_extra={"examples": [_REFERRAL_EXAMPLE]})

    id: uuid.UUID
    program_id: uuid.UUID
    state: ReferralState
    referee: RefereeOut
    state_changed_at: datetime
    created_at: datetime
    updated_at: datetime = Field(description="Last change of any kind (use it with `updated_since`)")


class PartnerReferralDetail(PartnerReferralOut):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **_REFERRAL_EXAMPLE,
                    "timeline": [
                        {
                            "from_state": None,
                            "to_state": "invited",
                            "actor": "member",
                            "occurred_at": "2027-02-20T14:05:00Z",
                        },
                        {
                            "from_state": "invited",
                            "to_state": "signed_up",
                            "actor": "system",
                            "occurred_at": "2027-02-22T08:00:00Z",
                        },
                        {
                            "from_state": "signed_up",
                            "to_state": "applied",
                            "actor": "partner",
                            "occurred_at": "2027-03-01T09:30:00Z",
                        },
                    ],
                }
            ]
        }
    )

    timeline: list[PartnerTimelineItem] = Field(description="Its state changes, oldest first")


OPENAPI_MODELS: list[type[BaseModel]] = [OutcomeItem, OutcomeFee]
