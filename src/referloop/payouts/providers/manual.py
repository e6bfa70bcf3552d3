"""The default provider: finance staff pay by hand (bank transfer, UPI, PayPal) and record the
reference. It sends nothing anywhere and stores nothing: the withdrawal row is the record, and this
class only shapes what staff report into the same `ProviderPayout` the other providers return.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime

from referloop.core.errors import InvalidInput
from referloop.payouts.providers.base import PayoutRequest, PayoutStatus, ProviderPayout, WebhookEvent
from referloop.payouts.providers.errors import UnsupportedPayout, WebhookVerificationError

NAME = "manual"
PREFIX = "manual_"
# A bank UTR (16-22 characters), a UPI reference (12 digits), a PayPal transaction id (17): letters,
# digits and a few separators, so that it reads back the same on a statement.
_REFERENCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 /._-]{3,63}$")


class ManualProvider:
    name = NAME

    async def create_payout(self, request: PayoutRequest) -> ProviderPayout:
        # Derived from our key, so asking twice gives the same payout, as with the real providers.
        return ProviderPayout(
            provider=NAME,
            provider_payout_id=PREFIX + request.idempotency_key,
            status=PayoutStatus.pending,
            provider_status="awaiting_staff",
            amount=request.amount,
            currency=request.currency,
            reference=request.reference,
            created_at=datetime.now(UTC),
        )

    def record_paid(
        self, provider_payout_id: str, *, amount: int, currency: str, reference: str
    ) -> ProviderPayout:
        """Staff sent the money; `reference` is what their bank or PayPal gave them for it."""
        reference = reference.strip()
        if not _REFERENCE.match(reference):
            raise InvalidInput(
                "A payment reference is 4-64 letters, digits, spaces or / . _ - (e.g. the bank's UTR)."
            )
        return self._recorded(
            provider_payout_id, amount, currency, PayoutStatus.paid, bank_reference=reference
        )

    def record_failed(
        self, provider_payout_id: str, *, amount: int, currency: str, reason: str
    ) -> ProviderPayout:
        """Staff could not pay it (account closed, name mismatch...); the member gets the money back."""
        reason = reason.strip()
        if not reason:
            raise InvalidInput("Say why the payout failed.")
        return self._recorded(
            provider_payout_id, amount, currency, PayoutStatus.failed, failure_message=reason[:500]
        )

    def _recorded(
        self,
        provider_payout_id: str,
        amount: int,
        currency: str,
        status: PayoutStatus,
        *,
        bank_reference: str | None = None,
        failure_message: str | None = None,
    ) -> ProviderPayout:
        if not provider_payout_id.startswith(PREFIX):
            raise UnsupportedPayout(f"{provider_payout_id!r} is not a manual payout.", provider=NAME)
        return ProviderPayout(
            provider=NAME,
            provider_payout_id=provider_payout_id,
            status=status,
            provider_status=status.value,
            amount=amount,
            currency=currency,
            bank_reference=bank_reference,
            failure_message=failure_message,
            created_at=datetime.now(UTC),
        )

    async def get_payout(self, provider_payout_id: str) -> ProviderPayout:
        raise UnsupportedPayout(
            "Manual payouts are tracked in our own records: staff record their outcome.", provider=NAME
        )

    async def find_payouts(self, reference: str) -> list[ProviderPayout]:
        return []  # nothing exists anywhere but in our records

    def verify_webhook(self, headers: Mapping[str, str], raw_body: bytes) -> WebhookEvent:
        raise WebhookVerificationError("The manual payout provider receives no webhooks.")

    async def reclaim_unsent(
        self, reference: str, *, metadata: Mapping[str, str], idempotency_key: str
    ) -> None:
        return None  # nothing moves before staff pay by hand

    async def reclaim_returned(self, payout: ProviderPayout, *, idempotency_key: str, reference: str) -> None:
        return None  # a payout marked failed by staff took nothing out

    async def aclose(self) -> None:
        return None
