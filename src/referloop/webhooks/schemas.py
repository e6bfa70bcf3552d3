"""Request and response models of the webhook endpoint APIs (partner and staff)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StringConstraints

from referloop.core.validation import Email, StrictModel
from referloop.webhooks.models import AttemptTrigger, DeliveryStatus, OwnerType

EventType = Literal[
    "referral.created", "referral.state_changed", "reward.pending", "reward.released", "reward.reversed"
]
EndpointUrl = Annotated[str, StringConstraints(min_length=8, max_length=2048, pattern=r"^[^\x00\s]+$")]
Description = Annotated[str, StringConstraints(max_length=500, pattern=r"^[^\x00]*$")]
EventTypes = Annotated[
    list[EventType],
    Field(max_length=len(get_args(EventType)), description="Events to receive; empty means all."),
]
ProgramIds = Annotated[
    list[uuid.UUID], Field(max_length=100, description="Only events of these programs; empty means all.")
]

_ENDPOINT_EXAMPLE: dict[str, Any] = {
    "url": "https://partner.example.edu/hooks/referloop",
    "description": "Admissions CRM",
    "event_types": ["referral.created", "referral.state_changed"],
}


class EndpointCreate(StrictModel):
    """`url` must be https (plain http only to a loopback address outside production)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_ENDPOINT_EXAMPLE]})

    url: EndpointUrl
    description: Description = ""
    event_types: EventTypes = Field(default_factory=list)
    contact_email: Email | None = Field(
        default=None, description="Who is told when the endpoint is disabled; defaults to the owner's."
    )


class OperatorEndpointCreate(EndpointCreate):
    """An operator endpoint receives every event, or only those of one university or of some programs."""

    university_id: uuid.UUID | None = None
    program_ids: ProgramIds = Field(default_factory=list)


class EndpointUpdate(StrictModel):
    """Only the fields sent change. `enabled: true` re-enables a disabled endpoint (pending deliveries
    resume); `enabled: false` pauses it."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"enabled": True}]})

    url: EndpointUrl | None = None
    description: Description | None = None
    event_types: EventTypes | None = None
    contact_email: Email | None = None
    enabled: StrictBool | None = None


class OperatorEndpointUpdate(EndpointUpdate):
    program_ids: ProgramIds | None = None


class SecretRotate(StrictModel):
    previous_valid_seconds: StrictInt = Field(
        default=86_400,
        ge=0,
        le=7 * 86_400,
        description="How long messages are also signed with the old secret (a second signature).",
    )


class EndpointOut(BaseModel):
    id: uuid.UUID
    url: str
    description: str
    event_types: list[str]
    owner_type: OwnerType
    university_id: uuid.UUID | None
    program_ids: list[uuid.UUID]
    contact_email: str
    enabled: bool
    disabled_at: datetime | None
    disabled_reason: str | None
    failing_since: datetime | None
    previous_secret_valid_until: datetime | None
    created_at: datetime
    updated_at: datetime


class EndpointWithSecret(EndpointOut):
    secret: str = Field(
        description="`whsec_` + base64; shown only now. Verify signatures with any Standard Webhooks library."
    )


class DeliveryOut(BaseModel):
    id: uuid.UUID
    message_id: str = Field(description="The `webhook-id` header: the same for every endpoint and retry")
    event_type: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    succeeded_at: datetime | None
    created_at: datetime


class AttemptOut(BaseModel):
    attempted_at: datetime
    trigger: AttemptTrigger
    status_code: int | None
    latency_ms: int
    error: str | None
    response_excerpt: str | None


class DeliveryDetail(DeliveryOut):
    payload: dict[str, Any]
    attempt_log: list[AttemptOut]
