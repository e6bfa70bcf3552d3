from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from referloop.core.validation import StrictModel
from referloop.disputes.models import DisputeState, Outcome, SubjectType

Title = Annotated[str, StringConstraints(min_length=3, max_length=140)]
Body = Annotated[str, StringConstraints(min_length=1, max_length=5000)]
CurrencyCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]


class DisputeCreate(StrictModel):
    subject_type: SubjectType
    subject_id: uuid.UUID | None = Field(default=None, description="Required unless subject_type is `other`.")
    title: Title
    message: Body

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "subject_type": "withdrawal",
                    "subject_id": "01937a2e-5b1c-7cc0-8e21-5f6a1b2c3d4e",
                    "title": "Withdrawal marked paid but not received",
                    "message": "My bank shows nothing since Monday.",
                }
            ]
        }
    )

    @model_validator(mode="after")
    def _subject(self) -> DisputeCreate:
        if self.subject_type is not SubjectType.other and self.subject_id is None:
            raise ValueError(f"subject_id is required for a {self.subject_type.value} dispute.")
        return self


class MessageCreate(StrictModel):
    body: Body


class StaffMessageCreate(StrictModel):
    body: Body
    internal: bool = Field(default=False, description="A staff-only note: the member never sees it.")


class Money(StrictModel):
    amount: int = Field(
        ge=-10_000_000_000, le=10_000_000_000, description="Minor units; positive credits the member."
    )
    currency: CurrencyCode


class Resolve(StrictModel):
    outcome: Outcome
    note: Body
    adjustment: Money | None = Field(default=None, description="Finance or admin only: posted to the ledger.")

    @model_validator(mode="after")
    def _adjustment(self) -> Resolve:
        if self.adjustment is not None and self.adjustment.amount == 0:
            raise ValueError("An adjustment of 0 changes nothing; leave it out.")
        if self.adjustment is not None and self.outcome in (Outcome.rejected, Outcome.withdrawn):
            raise ValueError("A rejected or withdrawn dispute carries no adjustment.")
        return self


class Assign(StrictModel):
    assignee_id: uuid.UUID | None = Field(description="A staff member, or null to unassign.")


class MessageOut(BaseModel):
    id: uuid.UUID
    author_role: str
    from_staff: bool
    body: str
    internal: bool
    created_at: datetime


class DisputeOut(BaseModel):
    id: uuid.UUID
    subject_type: SubjectType
    subject_id: uuid.UUID | None
    title: str
    state: DisputeState
    outcome: Outcome | None
    resolution_note: str | None
    adjustment: Money | None
    first_response_due_at: datetime
    resolution_due_at: datetime
    first_response_at: datetime | None
    resolved_at: datetime | None
    created_at: datetime
    last_message_at: datetime


class DisputeDetail(DisputeOut):
    messages: list[MessageOut]


class StaffDisputeOut(DisputeOut):
    member_id: uuid.UUID
    assignee_id: uuid.UUID | None
    overdue: bool


class StaffDisputeDetail(StaffDisputeOut):
    messages: list[MessageOut]
