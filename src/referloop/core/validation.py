"""Shared input types: bounded strings, normalized emails and E.164 phone numbers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, StringConstraints


class StrictModel(BaseModel):
    """Request bodies: unknown fields are refused, strings are trimmed."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def normalize_email(value: str) -> str:
    try:
        info = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from exc
    # The domain is case-insensitive by standard; local parts are in practice, so we lower both.
    return info.normalized.lower()


def normalize_phone(value: str) -> str:
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as exc:
        raise ValueError("Give the phone number in international form, for example +919876543210.") from exc
    if not phonenumbers.is_valid_number(number):
        raise ValueError("This is not a valid phone number.")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def storable_instant(value: datetime) -> datetime:
    """A time PostgreSQL (and asyncpg) can take: within the years 1 to 9999 once in UTC. Without it
    0001-01-01T00:00+04:00 passed validation and failed in the driver with a 500."""
    if value.tzinfo is not None:
        try:
            value.astimezone(UTC)
        except OverflowError:
            raise ValueError("the time falls outside the years 1 to 9999 in UTC") from None
    return value


# Times that come in (query parameters, bodies): a time zone is then required or not by the route.
Instant = Annotated[datetime, AfterValidator(storable_instant)]
AwareInstant = Annotated[AwareDatetime, AfterValidator(storable_instant)]

Email = Annotated[str, StringConstraints(min_length=3, max_length=254), AfterValidator(normalize_email)]
Phone = Annotated[str, StringConstraints(min_length=4, max_length=32), AfterValidator(normalize_phone)]
Password = Annotated[str, StringConstraints(min_length=1, max_length=128, strip_whitespace=False)]
DisplayName = Annotated[str, StringConstraints(min_length=1, max_length=80)]
OtpCode = Annotated[str, StringConstraints(pattern=r"^[0-9]{6}$")]
