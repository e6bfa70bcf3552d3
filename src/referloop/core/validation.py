"""Shared input types: bounded strings, normalized emails and E.164 phone numbers."""

from __future__ import annotations

from typing import Annotated

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints


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


Email = Annotated[str, StringConstraints(min_length=3, max_length=254), AfterValidator(normalize_email)]
Phone = Annotated[str, StringConstraints(min_length=4, max_length=32), AfterValidator(normalize_phone)]
Password = Annotated[str, StringConstraints(min_length=1, max_length=128, strip_whitespace=False)]
DisplayName = Annotated[str, StringConstraints(min_length=1, max_length=80)]
OtpCode = Annotated[str, StringConstraints(pattern=r"^[0-9]{6}$")]
