"""Stripe Connect: a transfer from our platform balance to the member's connected account, then (by
default) a payout from that account to its bank, made on the account with `Stripe-Account`.

Formats from Stripe's docs and stripe-python as collected in shared/PROVIDERS.md (part 1, B): Bearer
secret key, form-encoded bodies (`metadata[k]=v`), lowercase currencies, `Idempotency-Key` on every
POST, errors as `{"error": {"type", "code", "message", "param", ...}}`, and webhooks signed
`Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`.

Each step has its own key derived from ours (`<key>-transfer`, `<key>-payout`): Stripe refuses one
key on two endpoints, and a derived key is as stable across retries as ours. If the payout step is
refused, the transfer is reversed (again under a derived key) so the money is back on our balance
and the refusal can honestly say that nothing was paid.

Members get their connected account through Stripe's Express onboarding: we create the account
(`POST /v1/accounts`, type=express, transfers capability requested) and an Account Link
(`POST /v1/account_links`, type=account_onboarding) whose single-use URL takes them to Stripe's
pages; Stripe then reports the account's state in `account.updated` events on the Connect endpoint.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog
from pydantic import BaseModel, ConfigDict

from referloop.config import Settings
from referloop.payouts.providers.base import (
    PayoutRequest,
    PayoutStatus,
    ProviderPayout,
    StripeAccountDestination,
    WebhookEvent,
    lower_headers,
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
    UnsupportedPayout,
    WebhookVerificationError,
)
from referloop.payouts.providers.http import ProviderHttp, json_error, retry_after_seconds

log = structlog.get_logger(__name__)

NAME = "stripe"
REFERENCE_KEY = "referloop_reference"
MEMBER_KEY = "referloop_member_id"  # metadata of the connected accounts we create
ACCOUNT_UPDATED = "account.updated"

# Payout states (stripe-python _payout.py): pending → in_transit → paid; pending → canceled; failed
# within 5 business days, even after paid.
STATUS_MAP: dict[str, PayoutStatus] = {
    "pending": PayoutStatus.pending,
    "in_transit": PayoutStatus.processing,
    "paid": PayoutStatus.paid,
    "failed": PayoutStatus.failed,
    "canceled": PayoutStatus.cancelled,
}

_DESCRIPTOR_CHARS = re.compile(r"[^A-Za-z0-9 .-]+")


def normalize_status(provider_status: str) -> PayoutStatus:
    # Unknown: still in flight (see razorpayx.normalize_status).
    return STATUS_MAP.get(provider_status, PayoutStatus.processing)


def _created(obj: Mapping[str, Any]) -> datetime | None:
    created = obj.get("created")
    return datetime.fromtimestamp(created, UTC) if isinstance(created, int) else None


def _reference(obj: Mapping[str, Any]) -> str | None:
    metadata = obj.get("metadata") or {}
    value = metadata.get(REFERENCE_KEY) if isinstance(metadata, dict) else None
    return str(value) if value is not None else None


# Where Stripe's amounts differ from ISO 4217 minor units (Stripe's "special cases" and its list of
# zero-decimal currencies): ISK has no minor unit in ISO 4217 but counts in hundredths in Stripe's
# API (100 is 1 króna); MGA has two decimals in ISO 4217 but none in Stripe's API. Payouts in HUF and
# TWD must be whole units; amounts in three-decimal currencies must end in 0.
_STRIPE_SHIFT = {"ISK": 2, "MGA": -2}  # Stripe's decimals minus ISO 4217's
_PAYOUT_STEP = {"HUF": 100, "TWD": 100}
_THREE_DECIMAL = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})


def to_stripe_amount(amount: int, currency: str) -> int:
    """Our minor units (ISO 4217) in the units Stripe's API counts in (exact: see stripe_refusal)."""
    shift = _STRIPE_SHIFT.get(currency.upper(), 0)
    scale = int(10 ** abs(shift))
    return amount * scale if shift >= 0 else amount // scale


def from_stripe_amount(amount: int, currency: str) -> int:
    shift = _STRIPE_SHIFT.get(currency.upper(), 0)
    scale = int(10 ** abs(shift))
    return amount // scale if shift >= 0 else amount * scale


def stripe_refusal(amount: int, currency: str, *, payout: bool) -> str | None:
    """Why Stripe would refuse this amount, or could not carry it exactly (checked before any
    request), or None."""
    code = currency.upper()
    shift = _STRIPE_SHIFT.get(code, 0)
    if shift < 0 and amount % 10**-shift:
        return f"Stripe takes {code} in whole units only; {amount} minor units is not one."
    step = _PAYOUT_STEP.get(code, 1) if payout else 1
    if step > 1 and amount % step:
        return f"Stripe pays out {code} in whole units only; {amount} minor units is not one."
    if code in _THREE_DECIMAL and amount % 10:
        return f"Stripe takes {code} amounts that end in 0 (tens of its minor unit); {amount} does not."
    return None


def payout_from(obj: Mapping[str, Any], account: str | None) -> ProviderPayout:
    """A payout object; `account` is the connected account it lives on (None: the platform's)."""
    provider_status = str(obj.get("status", ""))
    return ProviderPayout(
        provider=NAME,
        provider_payout_id=f"{account}/{obj['id']}" if account else str(obj["id"]),
        status=normalize_status(provider_status),
        provider_status=provider_status,
        amount=from_stripe_amount(int(obj["amount"]), str(obj["currency"])),
        currency=str(obj["currency"]).upper(),
        reference=_reference(obj),
        failure_code=obj.get("failure_code"),
        failure_message=obj.get("failure_message"),
        created_at=_created(obj),
        raw=dict(obj),
    )


def transfer_from(obj: Mapping[str, Any]) -> ProviderPayout:
    """A transfer: it reaches the connected account at once (paid) unless fully reversed."""
    reversed_ = bool(obj.get("reversed"))
    return ProviderPayout(
        provider=NAME,
        provider_payout_id=str(obj["id"]),
        status=PayoutStatus.reversed if reversed_ else PayoutStatus.paid,
        provider_status="reversed" if reversed_ else "created",
        amount=from_stripe_amount(int(obj["amount"]), str(obj["currency"])),
        currency=str(obj["currency"]).upper(),
        reference=_reference(obj),
        created_at=_created(obj),
        raw=dict(obj),
    )


class ConnectedAccount(BaseModel):
    """What matters to us of a Stripe account object."""

    model_config = ConfigDict(frozen=True)

    account_id: str
    member_id: str | None  # our `referloop_member_id` metadata
    details_submitted: bool
    payouts_enabled: bool
    transfers: str | None  # the transfers capability: active, inactive or pending (None: not requested)
    disabled_reason: str | None
    created_at: datetime | None = None

    def can_be_paid(self, *, connect_payouts: bool) -> bool:
        """We transfer to the account (its transfers capability must be active) and, with
        `stripe_connect_payouts`, pay out from it to its bank (`payouts_enabled`)."""
        return self.transfers == "active" and (self.payouts_enabled or not connect_payouts)


class AccountLink(BaseModel):
    model_config = ConfigDict(frozen=True)

    url: str
    expires_at: datetime


def account_from(obj: Mapping[str, Any]) -> ConnectedAccount:
    capabilities = obj.get("capabilities") or {}
    requirements = obj.get("requirements") or {}
    transfers = capabilities.get("transfers") if isinstance(capabilities, dict) else None
    return ConnectedAccount(
        account_id=str(obj["id"]),
        member_id=_metadata(obj).get(MEMBER_KEY),
        details_submitted=obj.get("details_submitted") is True,
        payouts_enabled=obj.get("payouts_enabled") is True,
        transfers=str(transfers) if transfers is not None else None,
        disabled_reason=requirements.get("disabled_reason") if isinstance(requirements, dict) else None,
        created_at=_created(obj),
    )


def account_update_from(event: WebhookEvent) -> ConnectedAccount | None:
    """The connected account an `account.updated` event reports, or None when the event is about
    something else. A Connect event names the account it comes from (`account`); one that does not,
    or names another account than its object, is about our platform account, not a member's."""
    if event.provider != NAME or event.event_type != ACCOUNT_UPDATED:
        return None
    obj = (event.raw.get("data") or {}).get("object")
    if not isinstance(obj, dict) or obj.get("object") != "account" or not isinstance(obj.get("id"), str):
        return None
    if event.raw.get("account") != obj["id"]:
        return None
    return account_from(obj)


def _metadata(obj: Mapping[str, Any]) -> dict[str, str]:
    metadata = obj.get("metadata")
    return {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}


def classify(method: str, path: str, response: httpx.Response) -> PayoutProviderError:
    error = json_error(response)
    status = response.status_code
    code = error.get("code")
    message = str(error.get("message") or f"Stripe answered HTTP {status}")
    common: dict[str, Any] = {
        "provider": NAME,
        "provider_code": code or error.get("type"),
        "http_status": status,
    }
    should_retry = response.headers.get("Stripe-Should-Retry")
    # stripe-python maps 429, and a legacy 400 with code rate_limit, to RateLimitError.
    if status == 429 or (status == 400 and code == "rate_limit"):
        return ProviderRateLimited(message, retry_after=retry_after_seconds(response), **common)
    if error.get("type") == "idempotency_error":
        return IdempotencyKeyConflict(message, **common)
    # 409 (idempotency_key_in_use, lock_timeout) and 5xx are retried by stripe-python, unless
    # Stripe-Should-Retry says no. A 500 Stripe stored under the key replays on every retry: the
    # outcome stays unknown and the worker (or the status query) settles it later.
    if status == 409 or status >= 500 or should_retry == "true" or not error:
        return ProviderUnavailable(
            message, outcome_unknown=method != "GET", retry_in_process=should_retry != "false", **common
        )
    if status in (401, 403):
        return ProviderAuthenticationFailed(message, **common)
    if status == 404 and method == "GET":
        return ProviderPayoutNotFound(message, **common)
    return PayoutRejected(message, param=error.get("param"), **common)


def _form(params: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Stripe's form encoding: nested dicts as `a[b]=c`, booleans as true/false."""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        name = f"{prefix}[{key}]" if prefix else key
        if value is None:
            continue
        if isinstance(value, Mapping):
            pairs.extend(_form(value, name))
        elif isinstance(value, bool):
            pairs.append((name, "true" if value else "false"))
        else:
            pairs.append((name, str(value)))
    return pairs


def parse_signature_header(header: str) -> tuple[int, list[str]]:
    """`t=<unix>,v1=<hex>[,v1=<hex>][,v0=<hex>]` → (t, the v1 signatures). Other schemes (the
    test-mode v0) are ignored, as stripe-python does."""
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError as exc:
                raise WebhookVerificationError("The Stripe-Signature timestamp is not a number.") from exc
        elif key == "v1":
            signatures.append(value)
    if timestamp is None:
        raise WebhookVerificationError("Unable to extract the timestamp from Stripe-Signature.")
    if not signatures:
        raise WebhookVerificationError("Stripe-Signature has no v1 signature.")
    return timestamp, signatures


def compute_signature(timestamp: int, raw_body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), b"%d." % timestamp + raw_body, hashlib.sha256).hexdigest()


class StripeConnectProvider:
    """Webhook signatures are checked with the standard library's `hmac`, following stripe-python's
    `WebhookSignature.verify_header` rule for rule (any v1 may match, v0 ignored, timestamps older
    than the tolerance refused, future ones accepted): the `stripe` package would bring its whole API
    surface for one HMAC."""

    name = NAME

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._connect_payouts = settings.stripe_connect_payouts
        self._payout_method = settings.stripe_payout_method
        self._tolerance = settings.stripe_webhook_tolerance_seconds
        self._clock = clock
        self._webhook_secrets = [
            s.get_secret_value()
            for s in (settings.stripe_webhook_secret, settings.stripe_connect_webhook_secret)
            if s.get_secret_value()
        ]
        headers = {"Authorization": f"Bearer {settings.stripe_api_key.get_secret_value()}"}
        if settings.stripe_api_version:
            headers["Stripe-Version"] = settings.stripe_api_version
        self._http = ProviderHttp(
            provider=NAME,
            base_url=settings.stripe_base_url,
            classify=classify,
            headers=headers,
            timeout_seconds=settings.payout_provider_timeout_seconds,
            max_attempts=settings.payout_provider_max_attempts,
            retry_base_seconds=settings.payout_provider_retry_base_seconds,
            retry_max_seconds=settings.payout_provider_retry_max_seconds,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _post(
        self, path: str, params: Mapping[str, Any], *, key: str, account: str | None = None
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": key}
        if account:
            headers["Stripe-Account"] = account
        return await self._http.request("POST", path, form=_form(params), headers=headers)

    async def create_payout(self, request: PayoutRequest) -> ProviderPayout:
        destination = request.destination
        if not isinstance(destination, StripeAccountDestination):
            raise UnsupportedPayout(
                f"Stripe Connect pays connected accounts (acct_…), not {destination.kind}.", provider=NAME
            )
        refusal = stripe_refusal(request.amount, request.currency, payout=self._connect_payouts)
        if refusal:
            raise PayoutRejected(refusal, provider=NAME, no_payout_made=True)
        currency = request.currency.lower()
        amount = to_stripe_amount(request.amount, request.currency)
        metadata = {**request.metadata, REFERENCE_KEY: request.reference}
        transfer = await self._earlier_transfer(request) or await self._post(
            "/v1/transfers",
            {
                "amount": amount,
                "currency": currency,
                "destination": destination.account_id,
                "transfer_group": request.reference,
                "metadata": metadata,
            },
            key=f"{request.idempotency_key}-transfer",
        )
        if not self._connect_payouts:
            return transfer_from(transfer)
        params: dict[str, Any] = {
            "amount": amount,
            "currency": currency,
            "method": self._payout_method,
            "destination": destination.external_account_id,
            "metadata": {**metadata, "referloop_transfer": transfer["id"]},
        }
        descriptor = _DESCRIPTOR_CHARS.sub("", request.narration or "").strip()[:22].strip()
        if descriptor:
            params["statement_descriptor"] = descriptor
        try:
            payout = await self._post(
                "/v1/payouts", params, key=f"{request.idempotency_key}-payout", account=destination.account_id
            )
        except PermanentProviderError as exc:
            if not exc.no_payout_made:
                raise
            await self._reverse_transfer(request, transfer, exc)
            raise
        return payout_from(payout, destination.account_id)

    async def _earlier_transfer(self, request: PayoutRequest) -> dict[str, Any] | None:
        """The transfer an earlier try of this attempt made (same reference and metadata), not
        reversed. Stripe may prune an idempotency key after 24 hours: a try after that (the outbox's
        late retry, or `payouts sync` finding a transfer whose payout was never made) must reuse the
        transfer, not make a second one."""
        listed = await self._http.request(
            "GET", "/v1/transfers", params={"transfer_group": request.reference, "limit": "100"}
        )
        for transfer in listed.get("data", []):
            made_for = transfer.get("metadata") or {}
            if not transfer.get("reversed") and all(
                made_for.get(k) == v for k, v in request.metadata.items()
            ):
                return dict(transfer)
        return None

    async def reclaim_returned(self, payout: ProviderPayout, *, idempotency_key: str, reference: str) -> None:
        """A connected account's payout that failed (even days after `paid`) or was cancelled puts
        the money back on that account's Stripe balance, not ours: reverse the transfer that funded
        it, so that crediting the member's wallet again does not pay them twice."""
        account, _, payout_id = payout.provider_payout_id.rpartition("/")
        if not account:
            return  # a platform payout, or only a transfer: nothing is on the connected account
        metadata = payout.raw.get("metadata") or {}
        transfer_id = metadata.get("referloop_transfer") if isinstance(metadata, dict) else None
        if not transfer_id:
            raise PayoutRejected(
                f"The payout {payout_id} names no transfer (metadata referloop_transfer) to reverse.",
                provider=NAME,
                no_payout_made=False,
            )
        await self._reverse_unless_reversed(
            str(transfer_id), idempotency_key=idempotency_key, reference=reference
        )

    async def reclaim_unsent(
        self, reference: str, *, metadata: Mapping[str, str], idempotency_key: str
    ) -> None:
        """An attempt whose transfer reached the connected account but whose payout step never
        happened (a 5xx, then the method was removed): reverse that transfer."""
        listed = await self._http.request(
            "GET", "/v1/transfers", params={"transfer_group": reference, "limit": "100"}
        )
        for transfer in listed.get("data", []):
            made_for = transfer.get("metadata") or {}
            if not transfer.get("reversed") and all(made_for.get(k) == v for k, v in metadata.items()):
                await self._reverse_unless_reversed(
                    str(transfer["id"]), idempotency_key=idempotency_key, reference=reference
                )

    async def _reverse_unless_reversed(
        self, transfer_id: str, *, idempotency_key: str, reference: str
    ) -> None:
        transfer = await self._http.request("GET", f"/v1/transfers/{transfer_id}")
        if transfer.get("reversed"):
            return  # taken back already: an earlier try whose answer was lost, or the refusal path
        # A key of this try's own: Stripe answers a key with its first answer for 24 hours, so a try
        # after a refusal (the account's balance was short) must not reuse the refused one. The caller
        # holds the withdrawal's row lock, and a transfer is never reversed beyond its amount.
        await self._post(
            f"/v1/transfers/{transfer_id}/reversals",
            {"metadata": {REFERENCE_KEY: reference}},
            key=f"{idempotency_key}-reversal-{secrets.token_hex(6)}",
        )

    async def _reverse_transfer(
        self, request: PayoutRequest, transfer: Mapping[str, Any], cause: PermanentProviderError
    ) -> None:
        """Take the money back from the connected account after its payout was refused."""
        try:
            await self._reverse_unless_reversed(
                transfer["id"], idempotency_key=request.idempotency_key, reference=request.reference
            )
        except PayoutProviderError as exc:
            log.error(
                "stripe_transfer_reversal_failed",
                transfer=transfer["id"],
                reference=request.reference,
                error=str(exc),
            )
            raise PayoutRejected(
                f"{cause.detail} The transfer {transfer['id']} could not be reversed ({exc.detail}): "
                "the money is on the connected account.",
                provider=NAME,
                provider_code=cause.provider_code,
                http_status=cause.http_status,
                no_payout_made=False,
            ) from exc

    async def create_express_account(
        self, *, country: str, email: str | None, member_id: str, idempotency_key: str
    ) -> ConnectedAccount:
        """An Express connected account for a member, which can receive transfers once Stripe has
        onboarded it. Retried with the same key, Stripe answers with the account it made first."""
        obj = await self._post(
            "/v1/accounts",
            {
                "type": "express",
                "country": country,
                "email": email,
                "capabilities": {"transfers": {"requested": True}},
                "metadata": {MEMBER_KEY: member_id},
            },
            key=idempotency_key,
        )
        return account_from(obj)

    async def create_account_link(
        self, account_id: str, *, refresh_url: str, return_url: str, idempotency_key: str
    ) -> AccountLink:
        """A single-use URL of Stripe's onboarding for the account; it expires within minutes."""
        obj = await self._post(
            "/v1/account_links",
            {
                "account": account_id,
                "refresh_url": refresh_url,
                "return_url": return_url,
                "type": "account_onboarding",
            },
            key=idempotency_key,
        )
        return AccountLink(
            url=str(obj["url"]), expires_at=datetime.fromtimestamp(int(obj["expires_at"]), UTC)
        )

    async def get_payout(self, provider_payout_id: str) -> ProviderPayout:
        account, _, object_id = provider_payout_id.rpartition("/")
        if object_id.startswith("tr_") and not account:
            return transfer_from(await self._http.request("GET", f"/v1/transfers/{object_id}"))
        if not object_id.startswith("po_"):
            raise ProviderPayoutNotFound(f"{provider_payout_id!r} is not a Stripe payout id.", provider=NAME)
        headers = {"Stripe-Account": account} if account else None
        obj = await self._http.request("GET", f"/v1/payouts/{object_id}", headers=headers)
        return payout_from(obj, account or None)

    async def find_payouts(self, reference: str) -> list[ProviderPayout]:
        """Transfers are listed by `transfer_group` (our reference); each one's payout is found on its
        connected account by the `referloop_transfer` metadata we set. A transfer whose payout was
        never made is reported as `pending` (the money waits on the connected account)."""
        transfers = await self._http.request(
            "GET", "/v1/transfers", params={"transfer_group": reference, "limit": "100"}
        )
        found: list[ProviderPayout] = []
        for transfer in transfers.get("data", []):
            if not self._connect_payouts:
                found.append(transfer_from(transfer))
                continue
            account = str(transfer["destination"])
            payouts = await self._http.request(
                "GET", "/v1/payouts", params={"limit": "100"}, headers={"Stripe-Account": account}
            )
            matched = [
                payout_from(p, account)
                for p in payouts.get("data", [])
                if (p.get("metadata") or {}).get("referloop_transfer") == transfer["id"]
            ]
            if matched:
                found.extend(matched)
            elif transfer.get("reversed"):
                found.append(transfer_from(transfer))  # taken back: reversed
            else:
                found.append(
                    transfer_from(transfer).model_copy(
                        update={"status": PayoutStatus.pending, "provider_status": "transferred"}
                    )
                )
        return found

    def verify_webhook(self, headers: Mapping[str, str], raw_body: bytes) -> WebhookEvent:
        header = lower_headers(headers).get("stripe-signature", "")
        if not header:
            raise WebhookVerificationError("Stripe-Signature is missing.")
        if not self._webhook_secrets:
            raise WebhookVerificationError("No Stripe webhook secret is configured.")
        timestamp, signatures = parse_signature_header(header)
        expected = [compute_signature(timestamp, raw_body, secret) for secret in self._webhook_secrets]
        # As bytes: a signature of non-ASCII characters is a mismatch, not a TypeError (a 500).
        if not any(hmac.compare_digest(e.encode(), s.encode()) for e in expected for s in signatures):
            raise WebhookVerificationError("No Stripe-Signature v1 signature matches the body.")
        # Like stripe-python: too old is refused (replay), a clock ahead of ours is not.
        if timestamp < self._clock() - self._tolerance:
            raise WebhookVerificationError(f"The Stripe-Signature timestamp {timestamp} is too old.")
        try:
            event = json.loads(raw_body)
        except ValueError as exc:
            raise WebhookVerificationError("The webhook body is not JSON.") from exc
        if (
            not isinstance(event, dict)
            or event.get("object") != "event"
            or not isinstance(event.get("id"), str)
        ):
            raise WebhookVerificationError("The webhook body is not a Stripe event.")
        obj = (event.get("data") or {}).get("object") or {}
        kind = obj.get("object") if isinstance(obj, dict) else None
        payout: ProviderPayout | None = None
        if kind == "payout":
            payout = payout_from(obj, event.get("account"))
        elif kind == "transfer":
            payout = transfer_from(obj)
        created = event.get("created")
        return WebhookEvent(
            provider=NAME,
            event_id=event["id"],
            event_type=str(event.get("type", "")),
            occurred_at=datetime.fromtimestamp(created, UTC)
            if isinstance(created, int)
            else datetime.now(UTC),
            payout=payout,
            raw=event,
        )
