"""Payout providers behind one interface (`PayoutProvider`): manual, RazorpayX, Stripe Connect."""

from __future__ import annotations

import httpx

from referloop.config import PayoutProviderName, Settings
from referloop.payouts.providers.base import (
    BankAccountDestination,
    Beneficiary,
    Destination,
    IbanDestination,
    PayoutProvider,
    PayoutRequest,
    PayoutStatus,
    PaypalDestination,
    ProviderPayout,
    StripeAccountDestination,
    UpiDestination,
    WebhookEvent,
)
from referloop.payouts.providers.errors import (
    IdempotencyKeyConflict,
    PayoutProviderError,
    PayoutRejected,
    PermanentProviderError,
    ProviderAuthenticationFailed,
    ProviderPayoutNotFound,
    ProviderRateLimited,
    ProviderUnavailable,
    RetryableProviderError,
    UnsupportedPayout,
    WebhookVerificationError,
)
from referloop.payouts.providers.manual import ManualProvider
from referloop.payouts.providers.razorpayx import RazorpayXProvider
from referloop.payouts.providers.stripe import StripeConnectProvider


def build_payout_provider(
    settings: Settings,
    name: PayoutProviderName | str | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> PayoutProvider:
    """The configured provider, or the one named (a webhook route knows which provider calls it).
    Close it with `aclose()`; it holds a connection pool."""
    chosen = PayoutProviderName(name or settings.payout_provider)
    if chosen is PayoutProviderName.razorpayx:
        return RazorpayXProvider(settings, transport=transport)
    if chosen is PayoutProviderName.stripe:
        return StripeConnectProvider(settings, transport=transport)
    return ManualProvider()


__all__ = [
    "BankAccountDestination",
    "Beneficiary",
    "Destination",
    "IbanDestination",
    "IdempotencyKeyConflict",
    "ManualProvider",
    "PayoutProvider",
    "PayoutProviderError",
    "PayoutRejected",
    "PayoutRequest",
    "PayoutStatus",
    "PaypalDestination",
    "PermanentProviderError",
    "ProviderAuthenticationFailed",
    "ProviderPayout",
    "ProviderPayoutNotFound",
    "ProviderRateLimited",
    "ProviderUnavailable",
    "RazorpayXProvider",
    "RetryableProviderError",
    "StripeAccountDestination",
    "StripeConnectProvider",
    "UnsupportedPayout",
    "UpiDestination",
    "WebhookEvent",
    "WebhookVerificationError",
    "build_payout_provider",
]
