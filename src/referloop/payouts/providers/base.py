"""The one interface every payout provider implements, and the types it speaks.

A provider is given a `PayoutRequest` that carries *our* idempotency key and sends it on every call
that could create money movement, so that any retry (in-process, by the worker after a crash, or by
staff) finds the first payout instead of making a second. Provider states are normalized to
`PayoutStatus`; the provider's own word stays in `provider_status`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, StringConstraints


class PayoutStatus(StrEnum):
    """Our view of a payout at the provider. Ranks order them: an update is applied only if it
    outranks the state we hold (`supersedes`), which makes repeated and out-of-order webhooks
    harmless: `processed` arriving after `reversed` changes nothing, and a second return of the same
    money (Razorpay's `failed` then `reversed`) is not a second re-credit."""

    pending = "pending"  # accepted, not yet sent to the bank; can still be cancelled
    processing = "processing"  # sent, on its way to the beneficiary
    paid = "paid"  # arrived; can still come back (late bank return), see `reversed`/`failed`
    failed = "failed"  # did not arrive; the money never left or came back
    cancelled = "cancelled"  # withdrawn before it was sent
    reversed = "reversed"  # came back after it was sent or paid

    @property
    def rank(self) -> int:
        return _RANK[self]

    @property
    def money_returned(self) -> bool:
        """The beneficiary does not have the money (any more): the member is owed it back, once."""
        return self.rank == _RANK[PayoutStatus.failed]

    def supersedes(self, current: PayoutStatus) -> bool:
        """Whether this state, reported now, replaces `current`."""
        return self.rank > current.rank


_RANK = {
    PayoutStatus.pending: 0,
    PayoutStatus.processing: 1,
    PayoutStatus.paid: 2,
    # All three mean "the money is back with us": final, and one return only.
    PayoutStatus.failed: 3,
    PayoutStatus.cancelled: 3,
    PayoutStatus.reversed: 3,
}


class _Frozen(BaseModel):
    # `ignore`: destinations are built straight from a decrypted payout method (which has a label).
    model_config = ConfigDict(frozen=True, extra="ignore")


# Field names match payouts/methods/schemas.py, so a decrypted method validates as a destination.
class BankAccountDestination(_Frozen):
    """An Indian bank account (account number + IFSC)."""

    kind: Literal["bank_account"] = "bank_account"
    holder_name: str
    account_number: str
    ifsc: str


class IbanDestination(_Frozen):
    kind: Literal["iban"] = "iban"
    holder_name: str
    iban: str
    bic: str | None = None


class UpiDestination(_Frozen):
    kind: Literal["upi"] = "upi"
    upi_id: str


class PaypalDestination(_Frozen):
    kind: Literal["paypal"] = "paypal"
    email: str


class StripeAccountDestination(_Frozen):
    """A Stripe Connect connected account (`acct_…`), optionally one of its external accounts."""

    kind: Literal["stripe_account"] = "stripe_account"
    account_id: Annotated[str, StringConstraints(pattern=r"^acct_[A-Za-z0-9]+$")]
    external_account_id: str | None = None


Destination = Annotated[
    BankAccountDestination | IbanDestination | UpiDestination | PaypalDestination | StripeAccountDestination,
    Field(discriminator="kind"),
]


class Beneficiary(_Frozen):
    """Who is paid, for the provider's contact record (RazorpayX requires one)."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=120)]
    reference: Annotated[str, StringConstraints(min_length=1, max_length=40)]  # our member id
    email: str | None = None
    phone: str | None = None


# Both providers accept this: RazorpayX allows 4-36 characters of [A-Za-z0-9-_ ], Stripe up to 255.
# Stripe's two calls per payout use derived keys (`<key>-transfer`, `<key>-payout`).
IdempotencyKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{4,36}$")]


class PayoutRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    idempotency_key: IdempotencyKey
    reference: Annotated[str, StringConstraints(min_length=1, max_length=40)]  # our withdrawal id
    amount: Annotated[int, Field(strict=True, gt=0)]  # minor units
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
    destination: Destination
    beneficiary: Beneficiary
    narration: Annotated[str, StringConstraints(max_length=120)] | None = None  # shortened per provider
    metadata: dict[str, str] = Field(default_factory=dict, max_length=10)


class ProviderPayout(BaseModel):
    """A payout as the provider reports it."""

    model_config = ConfigDict(frozen=True)

    provider: str
    # The id to ask the provider about it. Stripe's is `acct_…/po_…` (a connected account's payout
    # can only be read with that account) or `tr_…` when only a transfer is made.
    provider_payout_id: str
    status: PayoutStatus
    provider_status: str
    amount: int
    currency: str
    # Our reference (the withdrawal id) as echoed by the provider: it finds the withdrawal when the
    # worker died before saving `provider_payout_id`.
    reference: str | None = None
    fees: int | None = None  # the provider's fee and tax in minor units, where it reports them
    bank_reference: str | None = None  # UTR, or the reference finance staff recorded
    failure_code: str | None = None
    failure_message: str | None = None
    created_at: datetime | None = None
    raw: dict[str, Any] = Field(default_factory=dict, repr=False)


class WebhookEvent(BaseModel):
    """A verified provider webhook. `event_id` is the inbox's dedupe key for (provider, event)."""

    model_config = ConfigDict(frozen=True)

    provider: str
    event_id: str
    event_type: str
    occurred_at: datetime
    payout: ProviderPayout | None  # None for events about no payout (e.g. payout.downtime.started)
    raw: dict[str, Any] = Field(default_factory=dict, repr=False)


@runtime_checkable
class PayoutProvider(Protocol):
    @property
    def name(self) -> str: ...

    async def create_payout(self, request: PayoutRequest) -> ProviderPayout:
        """Send the payout, or find the one already made under `request.idempotency_key`."""
        ...

    async def get_payout(self, provider_payout_id: str) -> ProviderPayout: ...

    async def find_payouts(self, reference: str) -> list[ProviderPayout]:
        """The payouts made for our reference (the withdrawal id). It finds a payout whose id we
        never saved once its idempotency key has expired (RazorpayX keeps keys 7 days, Stripe may
        prune them after 24 hours): past that, asking `create_payout` again would pay twice."""
        ...

    async def reclaim_returned(self, payout: ProviderPayout, *, idempotency_key: str, reference: str) -> None:
        """Bring back to our balance the money a failed or cancelled payout returned somewhere else,
        before the member's wallet is credited again. Stripe Connect returns it to the member's
        connected account: the transfer is reversed. Providers whose failed payouts come back to our
        own account do nothing. Raises a PermanentProviderError when it cannot be brought back."""
        ...

    async def reclaim_unsent(
        self, reference: str, *, metadata: Mapping[str, str], idempotency_key: str
    ) -> None:
        """Bring back what an attempt (its `metadata`) moved before its payout was made, before the
        withdrawal fails and the member's wallet is credited again. Stripe Connect: a transfer to
        the connected account whose payout step never happened is reversed. Providers that move
        nothing before the payout do nothing. Raises a PermanentProviderError when it cannot."""
        ...

    def verify_webhook(self, headers: Mapping[str, str], raw_body: bytes) -> WebhookEvent:
        """Check the signature over the raw body and parse it; raise WebhookVerificationError if the
        signature (or its timestamp) is not right. Header names are case-insensitive."""
        ...

    async def aclose(self) -> None: ...


def lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}
