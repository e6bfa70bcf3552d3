"""RazorpayX payouts: contact → fund account → payout, with `X-Payout-Idempotency`.

Formats from Razorpay's docs as collected in shared/PROVIDERS.md (part 1, A): Basic auth with
key_id:key_secret, JSON bodies, amounts in paise, errors as `{"error": {"code", "description",
"reason", "field", ...}}`, webhooks signed with a hex HMAC-SHA256 of the raw body.

Contacts and fund accounts take no idempotency key, but Razorpay returns the existing one for an
exact duplicate, so repeating the whole sequence after a crash yields the same fund account, hence
the same payout body, hence the same payout under our key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from referloop.config import Settings
from referloop.payouts.providers.base import (
    BankAccountDestination,
    PayoutRequest,
    PayoutStatus,
    ProviderPayout,
    UpiDestination,
    WebhookEvent,
    lower_headers,
)
from referloop.payouts.providers.errors import (
    IdempotencyKeyConflict,
    PayoutProviderError,
    PayoutRejected,
    ProviderAuthenticationFailed,
    ProviderPayoutNotFound,
    ProviderRateLimited,
    ProviderUnavailable,
    UnsupportedPayout,
    WebhookVerificationError,
)
from referloop.payouts.providers.http import ProviderHttp, json_error, retry_after_seconds

NAME = "razorpayx"

# RazorpayX payout states (x/payouts/states-life-cycle.md). `pending` and `rejected` exist only with
# the Approval Workflow on; `queued` waits for balance or for the beneficiary bank.
STATUS_MAP: dict[str, PayoutStatus] = {
    "pending": PayoutStatus.pending,
    "queued": PayoutStatus.pending,
    "scheduled": PayoutStatus.pending,
    "processing": PayoutStatus.processing,
    "processed": PayoutStatus.paid,
    "failed": PayoutStatus.failed,
    "rejected": PayoutStatus.failed,
    "cancelled": PayoutStatus.cancelled,
    "reversed": PayoutStatus.reversed,
}

_NARRATION_CHARS = re.compile(r"[^A-Za-z0-9 ]+")
_DIFFERENT_BODY = "different request body sent for the same idempotency header"
_NO_SUCH_ID = "does not exist"


def normalize_status(provider_status: str) -> PayoutStatus:
    # An unknown state is treated as still in flight: it neither pays nor releases anything, and any
    # known state reported later supersedes it.
    return STATUS_MAP.get(provider_status, PayoutStatus.processing)


def payout_from(entity: Mapping[str, Any]) -> ProviderPayout:
    details = entity.get("status_details") or {}
    provider_status = str(entity.get("status", ""))
    status = normalize_status(provider_status)
    fees = entity.get("fees")
    created = entity.get("created_at")
    return ProviderPayout(
        provider=NAME,
        provider_payout_id=str(entity["id"]),
        status=status,
        provider_status=provider_status,
        amount=int(entity["amount"]),
        currency=str(entity.get("currency", "INR")).upper(),
        reference=entity.get("reference_id"),
        fees=int(fees) if isinstance(fees, int) else None,
        bank_reference=entity.get("utr"),
        # status_details explains queued and failed payouts alike; only a return carries a failure.
        failure_code=details.get("reason") if status.money_returned else None,
        failure_message=details.get("description") if status.money_returned else None,
        created_at=datetime.fromtimestamp(created, UTC) if isinstance(created, int) else None,
        raw=dict(entity),
    )


def classify(method: str, path: str, response: httpx.Response) -> PayoutProviderError:
    error = json_error(response)
    code = error.get("code")
    description = str(error.get("description") or f"RazorpayX answered HTTP {response.status_code}")
    status = response.status_code
    common: dict[str, Any] = {"provider": NAME, "provider_code": code, "http_status": status}
    if status == 429:
        return ProviderRateLimited(description, retry_after=retry_after_seconds(response), **common)
    # SERVER_ERROR (including `idempotency_key_in_use`), GATEWAY_ERROR, an HTML 502 from a proxy:
    # whether it happened is unknown, and the same key makes asking again safe.
    if status >= 500 or code in {"SERVER_ERROR", "GATEWAY_ERROR"} or not error:
        return ProviderUnavailable(description, outcome_unknown=method != "GET", **common)
    if status in (401, 403):
        return ProviderAuthenticationFailed(description, **common)
    if description.lower().rstrip(".").startswith(_DIFFERENT_BODY):
        return IdempotencyKeyConflict(description, **common)
    # Razorpay answers an unknown id with 400, not 404 (api/customers/fetch-with-id.md).
    if method == "GET" and (status == 404 or _NO_SUCH_ID in description.lower()):
        return ProviderPayoutNotFound(description, **common)
    return PayoutRejected(description, field=error.get("field"), reason=error.get("reason"), **common)


class RazorpayXProvider:
    """Webhook signatures are checked with the standard library's `hmac`: the scheme is one
    HMAC-SHA256 over the raw body, and Razorpay's SDK (which does exactly this, plus `requests`)
    would add a dependency for three lines."""

    name = NAME

    def __init__(self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._account_number = settings.razorpayx_account_number
        self._bank_mode = settings.razorpayx_bank_mode
        self._purpose = settings.razorpayx_purpose
        self._contact_type = settings.razorpayx_contact_type
        self._queue_if_low_balance = settings.razorpayx_queue_if_low_balance
        self._webhook_secrets = [
            s.get_secret_value().encode()
            for s in (settings.razorpayx_webhook_secret, settings.razorpayx_webhook_previous_secret)
            if s.get_secret_value()
        ]
        self._http = ProviderHttp(
            provider=NAME,
            base_url=settings.razorpayx_base_url,
            classify=classify,
            auth=httpx.BasicAuth(settings.razorpayx_key_id, settings.razorpayx_key_secret.get_secret_value()),
            timeout_seconds=settings.payout_provider_timeout_seconds,
            max_attempts=settings.payout_provider_max_attempts,
            retry_base_seconds=settings.payout_provider_retry_base_seconds,
            retry_max_seconds=settings.payout_provider_retry_max_seconds,
            transport=transport,
        )

    async def reclaim_unsent(
        self, reference: str, *, metadata: Mapping[str, str], idempotency_key: str
    ) -> None:
        return None  # a payout is the first thing RazorpayX is asked to move

    async def reclaim_returned(self, payout: ProviderPayout, *, idempotency_key: str, reference: str) -> None:
        return None  # a failed or reversed payout returns to our RazorpayX account

    async def aclose(self) -> None:
        await self._http.aclose()

    async def create_payout(self, request: PayoutRequest) -> ProviderPayout:
        if request.currency != "INR":
            raise UnsupportedPayout(f"RazorpayX pays INR only, not {request.currency}.", provider=NAME)
        destination = request.destination
        if not isinstance(destination, BankAccountDestination | UpiDestination):
            raise UnsupportedPayout(
                f"RazorpayX pays Indian bank accounts and UPI ids, not {destination.kind}.", provider=NAME
            )
        fund_account_id = await self.ensure_fund_account(request)
        body: dict[str, Any] = {
            "account_number": self._account_number,
            "fund_account_id": fund_account_id,
            "amount": request.amount,
            "currency": request.currency,
            "mode": "UPI" if isinstance(destination, UpiDestination) else self._bank_mode,
            "purpose": self._purpose,
            "queue_if_low_balance": self._queue_if_low_balance,
            "reference_id": request.reference,
        }
        narration = _NARRATION_CHARS.sub("", request.narration or "").strip()[:30].strip()
        if narration:
            body["narration"] = narration
        if request.metadata:
            body["notes"] = {k[:256]: v[:256] for k, v in list(request.metadata.items())[:15]}
        payout = await self._http.request(
            "POST", "/v1/payouts", json=body, headers={"X-Payout-Idempotency": request.idempotency_key}
        )
        return payout_from(payout)

    async def ensure_fund_account(self, request: PayoutRequest) -> str:
        """The `fa_…` for the request's destination, creating the contact and fund account if new."""
        beneficiary = request.beneficiary
        contact: dict[str, Any] = {
            "name": beneficiary.name[:50],
            "type": self._contact_type,
            "reference_id": beneficiary.reference,
        }
        if beneficiary.email:
            contact["email"] = beneficiary.email
        if beneficiary.phone:
            contact["contact"] = beneficiary.phone
        contact_id = (await self._http.request("POST", "/v1/contacts", json=contact))["id"]
        destination = request.destination
        fund_account: dict[str, Any]
        if isinstance(destination, UpiDestination):
            fund_account = {
                "contact_id": contact_id,
                "account_type": "vpa",
                "vpa": {"address": destination.upi_id},
            }
        else:
            assert isinstance(destination, BankAccountDestination)
            fund_account = {
                "contact_id": contact_id,
                "account_type": "bank_account",
                "bank_account": {
                    "name": destination.holder_name,
                    "ifsc": destination.ifsc,
                    "account_number": destination.account_number,
                },
            }
        return str((await self._http.request("POST", "/v1/fund_accounts", json=fund_account))["id"])

    async def get_payout(self, provider_payout_id: str) -> ProviderPayout:
        if not re.fullmatch(r"pout_[A-Za-z0-9]+", provider_payout_id):
            raise ProviderPayoutNotFound(
                f"{provider_payout_id!r} is not a RazorpayX payout id.", provider=NAME
            )
        return payout_from(await self._http.request("GET", f"/v1/payouts/{provider_payout_id}"))

    async def find_payouts(self, reference: str) -> list[ProviderPayout]:
        # api/x/payouts/fetch-all.md: filter by reference_id (newest first, at most 100 a page; one
        # withdrawal has one payout, a few at most after staff retries).
        body = await self._http.request(
            "GET",
            "/v1/payouts",
            params={"account_number": self._account_number, "reference_id": reference, "count": "100"},
        )
        return [payout_from(item) for item in body.get("items", []) if item.get("reference_id") == reference]

    def verify_webhook(self, headers: Mapping[str, str], raw_body: bytes) -> WebhookEvent:
        h = lower_headers(headers)
        signature = h.get("x-razorpay-signature", "")
        if not signature:
            raise WebhookVerificationError("X-Razorpay-Signature is missing.")
        if not self._webhook_secrets:
            raise WebhookVerificationError("No RazorpayX webhook secret is configured.")
        # The previous secret too: Razorpay keeps retrying old events signed with it.
        if not any(
            # As bytes: a header of non-ASCII characters (HTTP headers arrive as latin-1) is a
            # mismatch, not a TypeError (a 500).
            hmac.compare_digest(
                hmac.new(secret, raw_body, hashlib.sha256).hexdigest().encode(), signature.encode()
            )
            for secret in self._webhook_secrets
        ):
            raise WebhookVerificationError("The X-Razorpay-Signature does not match the body.")
        try:
            event = json.loads(raw_body)
        except ValueError as exc:
            raise WebhookVerificationError("The webhook body is not JSON.") from exc
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            raise WebhookVerificationError("The webhook body is not a Razorpay event.")
        entity = ((event.get("payload") or {}).get("payout") or {}).get("entity")
        created = event.get("created_at")
        return WebhookEvent(
            provider=NAME,
            # Razorpay's dedupe id; a body hash stands in if a proxy dropped the header.
            event_id=h.get("x-razorpay-event-id") or "sha256:" + hashlib.sha256(raw_body).hexdigest(),
            event_type=event["event"],
            occurred_at=datetime.fromtimestamp(created, UTC)
            if isinstance(created, int)
            else datetime.now(UTC),
            payout=payout_from(entity) if isinstance(entity, dict) else None,
            raw=event,
        )
