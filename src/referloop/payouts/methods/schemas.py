from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)
from schwifty import BIC, IBAN
from schwifty.exceptions import SchwiftyException

from referloop.core.validation import Email, StrictModel

_IFSC = re.compile(r"^[A-Z]{4}0[A-Z0-9]{6}$")
_UPI = re.compile(r"^[a-z0-9][a-z0-9._-]{1,255}@[a-z][a-z0-9]{1,63}$")


def _ifsc(value: str) -> str:
    value = value.upper()
    # IFSC has no check digit: 4 letters of the bank, a literal 0, 6 characters of the branch.
    if not _IFSC.match(value):
        raise ValueError(
            "An IFSC is 11 characters: 4 letters, 0, then 6 letters or digits (e.g. HDFC0001234)."
        )
    return value


def _iban(value: str) -> str:
    try:
        return IBAN(value).compact  # validates the country format and the mod-97 checksum
    except SchwiftyException as exc:
        raise ValueError(f"Invalid IBAN: {exc}") from exc


def _bic(value: str) -> str:
    try:
        return BIC(value).compact
    except SchwiftyException as exc:
        raise ValueError(f"Invalid BIC: {exc}") from exc


# Places with their own ISO country code (and so their own BIC country) that use another country's
# IBAN: the French overseas departments and collectivities (FR IBANs), and the Crown Dependencies
# (GB IBANs).
_BIC_COUNTRIES_OF_IBAN: dict[str, frozenset[str]] = {
    "FR": frozenset({"GF", "GP", "MQ", "RE", "YT", "PM", "BL", "MF", "NC", "PF", "WF"}),
    "GB": frozenset({"GG", "JE", "IM"}),
}


def bic_matches_iban(bic: str, iban: str) -> bool:
    """Whether the BIC's country (its 5th and 6th characters) is the IBAN's country."""
    iban_country, bic_country = iban[:2], bic[4:6]
    return bic_country == iban_country or bic_country in _BIC_COUNTRIES_OF_IBAN.get(iban_country, ())


def _country(value: str) -> str:
    # Stripe refuses the codes it does not know or onboard (its message is passed on).
    value = value.upper()
    if not (len(value) == 2 and value.isascii() and value.isalpha()):
        raise ValueError("Give the country as its ISO 3166-1 alpha-2 code, for example US or GB.")
    return value


def _upi(value: str) -> str:
    value = value.lower()
    if not _UPI.match(value):
        raise ValueError("A UPI id looks like name@bank (for example asha.rao@okhdfc).")
    return value


IFSC = Annotated[str, StringConstraints(min_length=11, max_length=11), AfterValidator(_ifsc)]
IBANStr = Annotated[str, StringConstraints(min_length=15, max_length=42), AfterValidator(_iban)]
BICStr = Annotated[str, StringConstraints(min_length=8, max_length=11), AfterValidator(_bic)]
UpiId = Annotated[str, StringConstraints(min_length=3, max_length=320), AfterValidator(_upi)]
AccountNumber = Annotated[str, StringConstraints(pattern=r"^[0-9]{9,18}$")]
HolderName = Annotated[str, StringConstraints(min_length=2, max_length=120)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=60)]
CountryCode = Annotated[str, StringConstraints(min_length=2, max_length=2), AfterValidator(_country)]


class IndianBankAccount(StrictModel):
    kind: Literal["bank_account"] = "bank_account"
    holder_name: HolderName
    account_number: AccountNumber
    ifsc: IFSC
    label: Label | None = None


class IbanBankAccount(StrictModel):
    kind: Literal["iban"] = "iban"
    holder_name: HolderName
    iban: IBANStr
    bic: BICStr | None = None
    label: Label | None = None

    @field_validator("bic")
    @classmethod
    def _bic_in_iban_country(cls, bic: str | None, info: ValidationInfo) -> str | None:
        iban = info.data.get("iban")  # absent when the IBAN itself was refused
        if bic is not None and iban and not bic_matches_iban(bic, iban):
            raise ValueError(
                f"The BIC {bic} is of a bank in {bic[4:6]}, but the IBAN is of an account in {iban[:2]}: "
                "give the BIC of the bank that holds this IBAN."
            )
        return bic


class UpiMethod(StrictModel):
    kind: Literal["upi"] = "upi"
    upi_id: UpiId
    label: Label | None = None


class PaypalMethod(StrictModel):
    kind: Literal["paypal"] = "paypal"
    email: Email
    label: Label | None = None


class StripeAccountMethod(StrictModel):
    """A Stripe Connect Express account that we create for the member; Stripe onboards them (identity
    and bank account) on its own pages, at the `onboarding_url` of the answer."""

    kind: Literal["stripe_account"] = "stripe_account"
    country: CountryCode = Field(description="Where the member lives (ISO 3166-1 alpha-2), e.g. US.")
    label: Label | None = None


PayoutMethodIn = Annotated[
    IndianBankAccount | IbanBankAccount | UpiMethod | PaypalMethod | StripeAccountMethod,
    Field(discriminator="kind"),
]
# What a method can be changed into with PUT: a connected account is never typed in, it is made.
DetailsIn = Annotated[
    IndianBankAccount | IbanBankAccount | UpiMethod | PaypalMethod, Field(discriminator="kind")
]


class PayoutMethodOut(BaseModel):
    id: uuid.UUID
    kind: str
    label: str | None
    masked: str = Field(description="The account shown safely, e.g. ••••1234 or acct_••••1234")
    status: Literal["active", "pending_onboarding", "restricted"] = Field(
        description="`active`: can receive payouts (after `usable_from`). A Stripe account is "
        "`pending_onboarding` until Stripe has what it needs to pay it, and `restricted` when Stripe "
        "needs more; get a fresh link at `POST /v1/payout-methods/{id}/onboarding-link`."
    )
    usable_from: datetime = Field(
        description="Payouts to this method are allowed from this time (24 h cool-down after it is "
        "added or changed; for a Stripe account, after Stripe activates it)."
    )
    created_at: datetime

    model_config = ConfigDict(from_attributes=True)


class PayoutMethodAdded(PayoutMethodOut):
    onboarding_url: str | None = Field(
        default=None,
        description="For a Stripe account: open it to finish onboarding on Stripe's pages. It works "
        "once and expires within minutes; ask for another at `POST .../onboarding-link`.",
    )
    onboarding_url_expires_at: datetime | None = None


class OnboardingLinkOut(BaseModel):
    payout_method_id: uuid.UUID
    onboarding_url: str = Field(description="Stripe's onboarding page; it works once.")
    expires_at: datetime


class PayoutMethodList(BaseModel):
    items: list[PayoutMethodOut]
