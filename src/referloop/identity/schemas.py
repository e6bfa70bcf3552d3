from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal
from zoneinfo import available_timezones

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    field_validator,
    model_validator,
)

from referloop.core.validation import DisplayName, Email, OtpCode, Password, Phone, StrictModel
from referloop.identity.models import MAX_MEMBER_LEVEL, KycStatus, Role

ReferralCodeIn = Annotated[str, StringConstraints(min_length=4, max_length=32, pattern=r"^[A-Za-z0-9-]+$")]
DeviceName = Annotated[str, StringConstraints(min_length=1, max_length=100)]
# The `rl_click` cookie a share link sets (a UUID), and the app's install id.
ClickIdIn = Annotated[str, StringConstraints(min_length=32, max_length=36, pattern=r"^[0-9A-Fa-f-]+$")]
DeviceIdIn = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")]


def _known_timezone(value: str) -> str:
    if value not in _TIMEZONES:
        raise ValueError("Unknown IANA time zone, for example Asia/Kolkata.")
    return value


_TIMEZONES = frozenset(available_timezones()) | {"UTC"}

Locale = Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(-[A-Z]{2})?$", max_length=35)]


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


# Upper-cased before the pattern is checked (StringConstraints' to_upper runs after it), so "in" is IN.
CountryCode = Annotated[str, BeforeValidator(_upper), StringConstraints(pattern=r"^[A-Z]{2}$")]
CurrencyCode = Annotated[str, BeforeValidator(_upper), StringConstraints(pattern=r"^[A-Z]{3}$")]
TimeZone = Annotated[str, StringConstraints(max_length=64), AfterValidator(_known_timezone)]


class RegisterRequest(StrictModel):
    email: Email | None = None
    phone: Phone | None = None
    password: Password
    display_name: DisplayName
    referral_code: ReferralCodeIn | None = Field(
        default=None, description="The referral code of the member who invited you."
    )
    device_name: DeviceName | None = None
    click_id: ClickIdIn | None = Field(
        default=None,
        description="The click id of the share link that brought you (the `rl_click` cookie, which is "
        "also read when this field is left out).",
    )
    device_id: DeviceIdIn | None = Field(
        default=None, description="The app's install id (also read from `X-Device-ID`)."
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "email": "asha@example.com",
                    "password": "correct horse battery",
                    "display_name": "Asha",
                    "referral_code": "7K3M9QXA",
                }
            ]
        }
    )

    @model_validator(mode="after")
    def _email_or_phone(self) -> RegisterRequest:
        if not self.email and not self.phone:
            raise ValueError("Give an email address, a phone number, or both.")
        return self


class LoginRequest(StrictModel):
    login: Annotated[str, StringConstraints(min_length=3, max_length=254)] = Field(
        description="Email address or phone number (international form)."
    )
    password: Password
    totp_code: OtpCode | None = Field(default=None, description="Required for staff with TOTP enrolled.")
    device_name: DeviceName | None = None

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"login": "asha@example.com", "password": "correct horse battery"}]}
    )


class RefreshRequest(StrictModel):
    refresh_token: Annotated[str, StringConstraints(min_length=10, max_length=200)]


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - a scheme name, not a secret
    expires_in: int = Field(description="Seconds until the access token expires.")
    session_id: uuid.UUID


class SessionOut(BaseModel):
    id: uuid.UUID
    device_name: str | None
    ip: str | None
    user_agent: str | None
    created_at: datetime
    last_used_at: datetime
    current: bool


class SessionList(BaseModel):
    items: list[SessionOut]


class CodeConfirm(StrictModel):
    code: OtpCode


class PasswordForgotRequest(StrictModel):
    email: Email


class PasswordResetRequest(StrictModel):
    email: Email
    code: OtpCode
    new_password: Password


class TotpEnrollRequest(StrictModel):
    password: Password = Field(
        description="Your current password: a stolen session must not bind its own authenticator."
    )


class TotpDisableRequest(StrictModel):
    password: Password
    code: OtpCode = Field(description="A current code from the authenticator app being removed.")


class PasswordChangeRequest(StrictModel):
    current_password: Password
    new_password: Password


class MeOut(BaseModel):
    id: uuid.UUID
    email: str | None
    phone: str | None
    display_name: str
    role: Role
    referral_code: str
    email_verified: bool
    phone_verified: bool
    locale: str
    country: str | None
    timezone: str
    preferred_currency: str | None
    kyc_status: KycStatus
    level: int = Field(description="Member level (1 and up); some campaigns require a minimum level.")
    totp_enabled: bool
    created_at: datetime


class MeUpdate(StrictModel):
    """Only these fields can be changed by the member; anything else is refused with 422."""

    display_name: DisplayName | None = None
    locale: Locale | None = None
    country: CountryCode | None = None
    timezone: TimeZone | None = None
    preferred_currency: CurrencyCode | None = None

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"display_name": "Asha R", "timezone": "Asia/Kolkata"}]}
    )

    @field_validator("display_name", "locale", "timezone")
    @classmethod
    def _not_cleared(cls, value: str | None) -> str | None:
        # Runs only for values that were sent: leaving the field out keeps it, `null` is refused.
        if value is None:
            raise ValueError("This field cannot be cleared; leave it out to keep it.")
        return value


class TotpEnrollOut(BaseModel):
    secret: str
    otpauth_uri: str


class StaffMemberOut(MeOut):
    deleted_at: datetime | None = None


class RoleChange(StrictModel):
    role: Role


class KycChange(StrictModel):
    kyc_status: KycStatus


class LevelChange(StrictModel):
    level: StrictInt = Field(ge=1, le=MAX_MEMBER_LEVEL)

    model_config = ConfigDict(json_schema_extra={"examples": [{"level": 3}]})


class Accepted(BaseModel):
    status: Literal["accepted"] = "accepted"
    detail: str
