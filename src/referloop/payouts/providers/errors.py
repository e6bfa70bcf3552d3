"""What can go wrong when we ask a payout provider for something, in our own terms.

Two questions matter to the caller (the withdrawal worker), and each error answers both:

- May I try again with the same idempotency key? `retryable`. Retryable errors are transient (5xx,
  timeouts, rate limits, a duplicate request still in flight); the key makes a retry safe.
- Is it certain that no payout was made? `no_payout_made`. Only then may held money go back to the
  member. A timeout or a 5xx after the request left us is *not* certain (the provider may have paid),
  and neither is an idempotency conflict (a payout exists under that key). Those keep the withdrawal
  in processing until the provider's webhook or a status query settles it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from referloop.core.errors import AppError


class PayoutProviderError(AppError):
    status_code = 502
    code = "payout_provider_error"
    title = "Payout provider error"
    retryable: ClassVar[bool] = False
    no_payout_made: bool = False

    def __init__(
        self,
        detail: str,
        *,
        provider: str,
        provider_code: str | None = None,
        http_status: int | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail, headers=headers, provider=provider, provider_code=provider_code, **extra)
        self.provider = provider
        self.provider_code = provider_code
        self.http_status = http_status


class RetryableProviderError(PayoutProviderError):
    """Try again later with the same idempotency key."""

    code = "payout_provider_unavailable"
    title = "Payout provider unavailable"
    retryable = True

    def __init__(
        self,
        detail: str,
        *,
        provider: str,
        outcome_unknown: bool = True,
        retry_in_process: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(detail, provider=provider, **kwargs)
        # True when the request reached (or may have reached) the provider: it may have acted on it.
        self.outcome_unknown = outcome_unknown
        # False when the provider says a quick retry cannot help (Stripe-Should-Retry: false, or a
        # Retry-After longer than we wait in-process): the worker's backoff should handle it.
        self.retry_in_process = retry_in_process


class ProviderUnavailable(RetryableProviderError):
    """5xx, a timeout, a broken connection, or our own duplicate request still in flight."""


class ProviderRateLimited(RetryableProviderError):
    code = "payout_provider_rate_limited"
    title = "Payout provider rate limit"
    status_code = 503

    def __init__(
        self, detail: str, *, provider: str, retry_after: float | None = None, **kwargs: Any
    ) -> None:
        headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else None
        # A refused request did nothing: the outcome is known.
        kwargs.setdefault("outcome_unknown", False)
        super().__init__(detail, provider=provider, headers=headers, retry_after=retry_after, **kwargs)
        self.retry_after = retry_after


class PermanentProviderError(PayoutProviderError):
    """Retrying the same request cannot succeed."""


class PayoutRejected(PermanentProviderError):
    """The provider refused the payout (invalid details, too small, our balance too low...).
    Nothing was paid; `detail` is the provider's own message."""

    code = "payout_rejected"
    title = "Payout rejected by the provider"
    no_payout_made = True

    def __init__(self, detail: str, *, provider: str, no_payout_made: bool = True, **kwargs: Any) -> None:
        super().__init__(detail, provider=provider, **kwargs)
        self.no_payout_made = no_payout_made


class ProviderAuthenticationFailed(PermanentProviderError):
    """Our credentials are wrong or lack access. Nothing was paid, but this is our configuration's
    fault, not the member's: don't fail their withdrawal for it, alert and retry once fixed."""

    code = "payout_provider_auth_failed"
    title = "Payout provider refused our credentials"
    no_payout_made = True


class IdempotencyKeyConflict(PermanentProviderError):
    """The key was already used with another request body. A payout may exist under that key, so
    nothing may be released; it means a bug on our side (the body of a retry must never change)."""

    status_code = 409
    code = "payout_idempotency_conflict"
    title = "Idempotency key reused with another request"


class ProviderPayoutNotFound(PermanentProviderError):
    status_code = 404
    code = "provider_payout_not_found"
    title = "Payout not found at the provider"


class UnsupportedPayout(PermanentProviderError):
    """The provider cannot do this (a currency or destination it doesn't pay, or an operation the
    manual provider has no answer for). Checked before any request is sent."""

    status_code = 422
    code = "payout_not_supported"
    title = "Payout not supported by this provider"
    no_payout_made = True


class WebhookVerificationError(AppError):
    """A webhook whose signature, timestamp or body we refuse. Its content must not be trusted."""

    status_code = 400
    code = "invalid_webhook_signature"
    title = "Invalid webhook signature"
