"""A local RazorpayX that answers as Razorpay's docs say (shared/PROVIDERS.md part 1, A).

Documented behaviour it reproduces:
- Basic auth with key_id:key_secret; a bad key or secret is 401 with a JSON error body.
- POST /v1/contacts and /v1/fund_accounts return the existing entity for an exact duplicate.
- POST /v1/payouts requires `X-Payout-Idempotency` (4-36 of [A-Za-z0-9-_ ]). The same key with the
  same body returns the original payout in its *current* state; the same key with another body is
  400 "Different request body sent for the same Idempotency Header"; the same key while the first
  request is still running is 500 SERVER_ERROR with reason `idempotency_key_in_use`.
- Validation errors are 400 BAD_REQUEST_ERROR (messages from Razorpay's docs and server fixtures
  where they exist: minimum 100 paise, amount must be an integer, low balance, unknown id).
- States and transitions of x/payouts/states-life-cycle.md; `fees`/`tax` set from `processing` on.
- Webhooks: the event envelope, `X-Razorpay-Signature` = hex HMAC-SHA256 of the raw body,
  `X-Razorpay-Event-Id`.
Messages no source confirmed (other validation wording, the 429 body) follow Razorpay's style.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.server import FakeBase, lower, random_id

Result = tuple[int, dict[str, Any]]

PURPOSES = {"refund", "cashback", "payout", "salary", "utility bill", "vendor bill"}
CONTACT_TYPES = {"vendor", "customer", "employee", "self"}
BANK_MODES = {"IMPS", "NEFT", "RTGS"}
IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_ -]{4,36}$")
NARRATION = re.compile(r"^[A-Za-z0-9 ]{0,30}$")
VPA = re.compile(r"^[A-Za-z0-9.\-_]{2,256}@[A-Za-z]{2,64}$")

# x/payouts/states-life-cycle.md
TRANSITIONS: dict[str, set[str]] = {
    "pending": {"queued", "processing", "rejected"},
    "queued": {"processing", "cancelled", "failed"},
    "scheduled": {"processing", "cancelled", "failed"},
    "processing": {"processed", "reversed", "failed"},
    "processed": {"reversed"},
    "reversed": {"failed"},  # RazorpayX current accounts only
    "failed": {"reversed"},  # once the debited money is credited back
    "rejected": set(),
    "cancelled": set(),
}
EVENT_FOR_STATUS = {
    "pending": "payout.pending",
    "rejected": "payout.rejected",
    "queued": "payout.queued",
    "processing": "payout.initiated",
    "processed": "payout.processed",
    "reversed": "payout.reversed",
    "failed": "payout.failed",
    "cancelled": "payout.updated",  # no event of its own is documented
}
BANKS = {"HDFC": "HDFC Bank", "ICIC": "ICICI Bank", "SBIN": "State Bank of India", "UTIB": "Axis Bank"}


def error(
    status: int,
    description: str,
    *,
    code: str = "BAD_REQUEST_ERROR",
    field: str | None = None,
    reason: str = "NA",
    source: str = "NA",
) -> Result:
    body: dict[str, Any] = {
        "code": code,
        "description": description,
        "source": source,
        "step": "NA",
        "reason": reason,
        "metadata": {},
    }
    if field is not None:
        body["field"] = field
    return status, {"error": body}


def invalid(description: str, field: str | None = None) -> Result:
    return error(400, description, field=field, reason="input_validation_failed", source="business")


SERVER_ERROR = "We are facing some trouble completing your request at the moment. Please try again shortly."


class FakeRazorpayX(FakeBase):
    def __init__(
        self,
        *,
        key_id: str = "rzp_test_fakekey0001",
        key_secret: str = "fake_key_secret_for_tests",
        account_number: str = "7878780080316316",
        webhook_secret: str = "fake_razorpayx_webhook_secret",
    ) -> None:
        super().__init__()
        self.key_id = key_id
        self.key_secret = key_secret
        self.account_number = account_number
        self.webhook_secret = webhook_secret
        self.account_id = random_id("acc_")
        self.balance = 10**12  # paise
        self.approval_workflow = False
        self.fees, self.tax = 500, 90
        self.contacts: dict[str, dict[str, Any]] = {}
        self.fund_accounts: dict[str, dict[str, Any]] = {}
        self.payouts: dict[str, dict[str, Any]] = {}
        self.created_by_key: dict[str, list[str]] = {}  # every payout each key created (must be <= 1)
        self._keys: dict[str, tuple[dict[str, Any], str]] = {}  # key -> (request body, payout id)
        self._in_flight: set[str] = set()
        self.app = Starlette(
            routes=[
                Route("/v1/contacts", self._wrap(self._create_contact), methods=["POST"]),
                Route("/v1/fund_accounts", self._wrap(self._create_fund_account), methods=["POST"]),
                Route("/v1/payouts", self._wrap(self._create_payout), methods=["POST"]),
                Route("/v1/payouts", self._wrap(self._list_payouts), methods=["GET"]),
                Route("/v1/payouts/{id}", self._wrap(self._get_payout), methods=["GET"]),
                Route("/v1/payouts/{id}/cancel", self._wrap(self._cancel_payout), methods=["POST"]),
            ]
        )

    # -- plumbing --------------------------------------------------------------------------
    def _authorized(self, header: str | None) -> Result | None:
        if not header or not header.startswith("Basic "):
            return error(401, "The api key provided is invalid")
        try:
            key_id, _, secret = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return error(401, "The api key provided is invalid")
        if not hmac.compare_digest(key_id, self.key_id):
            return error(401, "The api key provided is invalid")
        if not hmac.compare_digest(secret, self.key_secret):
            return error(401, "The api secret provided is invalid")
        return None

    def _wrap(
        self, handler: Callable[[Request, Any, dict[str, str]], Awaitable[Result]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            raw = await request.body()
            headers = lower(request.headers)
            recorded = self._record(request.method, request.url.path, headers, raw)
            status, body, extra_headers = await self._handle(request, handler, raw, headers)
            recorded.status = status
            return JSONResponse(body, status_code=status, headers=extra_headers)

        return endpoint

    async def _handle(
        self,
        request: Request,
        handler: Callable[[Request, Any, dict[str, str]], Awaitable[Result]],
        raw: bytes,
        headers: dict[str, str],
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        method, path = request.method, request.url.path
        refused = self._authorized(headers.get("authorization"))
        if refused:
            return (*refused, {})
        if fault := self.faults.take("rate_limit", method, path):
            extra = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            return (*error(429, "Too many requests"), extra)
        if fault := self.faults.take("error_before", method, path):
            return (*error(fault.status, SERVER_ERROR, code="SERVER_ERROR"), {})
        payload: Any = None
        if raw:
            try:
                payload = json.loads(raw)
            except ValueError:
                return (*invalid("The request body is not valid JSON."), {})
        status, body = await handler(request, payload, headers)
        if 200 <= status < 300 and (fault := self.faults.take("error_after", method, path)):
            return (*error(fault.status, SERVER_ERROR, code="SERVER_ERROR"), {})
        return status, body, {}

    # -- contacts and fund accounts ---------------------------------------------------------
    async def _create_contact(self, request: Request, body: Any, headers: dict[str, str]) -> Result:
        if not isinstance(body, dict):
            return invalid("The name field is required.", "name")
        name = body.get("name")
        if not isinstance(name, str) or not name:
            return invalid("The name field is required.", "name")
        if len(name) < 3:
            return invalid("The name must be at least 3 characters.", "name")
        if len(name) > 50:
            return invalid("The name may not be greater than 50 characters.", "name")
        if "type" in body and body["type"] not in CONTACT_TYPES:
            return invalid(f"Invalid type: {body['type']}", "type")
        if len(str(body.get("reference_id") or "")) > 40:
            return invalid("The reference id may not be greater than 40 characters.", "reference_id")
        identity = {k: body.get(k) for k in ("name", "email", "contact", "type", "reference_id")}
        with self.lock:
            for contact in self.contacts.values():
                if {k: contact.get(k) for k in identity} == identity:
                    return 200, contact  # an exact duplicate returns the existing contact
            contact = {
                "id": random_id("cont_"),
                "entity": "contact",
                **identity,
                "batch_id": None,
                "active": True,
                "notes": body.get("notes") or [],
                "created_at": int(time.time()),
            }
            self.contacts[contact["id"]] = contact
        return 201, contact

    async def _create_fund_account(self, request: Request, body: Any, headers: dict[str, str]) -> Result:
        if not isinstance(body, dict):
            return invalid("The contact id field is required.", "contact_id")
        with self.lock:
            if body.get("contact_id") not in self.contacts:
                return invalid("The contact id provided does not exist", "contact_id")
        account_type = body.get("account_type")
        details: dict[str, Any]
        if account_type == "bank_account":
            bank = body.get("bank_account") or {}
            name, ifsc, number = bank.get("name"), bank.get("ifsc"), bank.get("account_number")
            if not isinstance(name, str) or not 3 <= len(name) <= 120:
                return invalid("The name must be between 3 and 120 characters.", "name")
            if not isinstance(ifsc, str) or len(ifsc) != 11:
                return invalid("The IFSC must be 11 characters.", "ifsc")
            if not isinstance(number, str) or not re.fullmatch(r"[A-Za-z0-9]{5,35}", number):
                return invalid("The account number format is invalid.", "account_number")
            details = {
                "bank_account": {
                    "ifsc": ifsc,
                    "bank_name": BANKS.get(ifsc[:4], "Bank"),
                    "name": name,
                    "account_number": number,
                    "notes": [],
                }
            }
        elif account_type == "vpa":
            address = (body.get("vpa") or {}).get("address")
            if not isinstance(address, str) or not VPA.match(address):
                return invalid("Invalid VPA. Please enter a valid Virtual Payment Address", "address")
            handle = address.split("@")[0]
            details = {"vpa": {"username": handle, "handle": address.split("@")[1], "address": address}}
        else:
            return invalid("The selected account type is invalid.", "account_type")
        with self.lock:
            for existing in self.fund_accounts.values():
                if (
                    existing["contact_id"] == body["contact_id"]
                    and existing["account_type"] == account_type
                    and existing.get(account_type) == details[account_type]
                ):
                    return 200, existing  # duplicates are deduplicated; fund accounts never change
            fund_account = {
                "id": random_id("fa_"),
                "entity": "fund_account",
                "contact_id": body["contact_id"],
                "account_type": account_type,
                **details,
                "active": True,
                "batch_id": None,
                "created_at": int(time.time()),
            }
            self.fund_accounts[fund_account["id"]] = fund_account
        return 200, fund_account

    # -- payouts -------------------------------------------------------------------------------
    async def _create_payout(self, request: Request, body: Any, headers: dict[str, str]) -> Result:
        key = headers.get("x-payout-idempotency")
        if not key:
            return error(
                400,
                "Idempotency key is missing. Include idempotency header and key in the request.",
                field="X-Payout-Idempotency",
                source="business",
                reason="null",
            )
        if not IDEMPOTENCY_KEY.match(key):
            return invalid(
                "The idempotency key must be 4-36 characters: letters, numbers, hyphens, underscores and spaces.",
                "X-Payout-Idempotency",
            )
        with self.lock:
            if key in self._in_flight:
                return error(500, SERVER_ERROR, code="SERVER_ERROR", reason="idempotency_key_in_use")
            if key in self._keys:
                first_body, payout_id = self._keys[key]
                if first_body != body:
                    return error(400, "Different request body sent for the same Idempotency Header")
                return 200, dict(self.payouts[payout_id])  # the original payout, as it is now
            self._in_flight.add(key)
        try:
            if fault := self.faults.take("hold", "POST", "/v1/payouts"):
                await asyncio.sleep(fault.seconds)
            with self.lock:
                refused = self._validate_payout(body)
                if refused:
                    return refused  # validation failures do not use up the key
                payout = self._new_payout(body)
                self._keys[key] = (body, payout["id"])
                self.created_by_key.setdefault(key, []).append(payout["id"])
                return 200, dict(payout)
        finally:
            with self.lock:
                self._in_flight.discard(key)

    def _validate_payout(self, body: Any) -> Result | None:
        if not isinstance(body, dict):
            return invalid("The account number field is required.", "account_number")
        for required in ("account_number", "fund_account_id", "amount", "currency", "mode", "purpose"):
            if body.get(required) in (None, ""):
                return invalid(f"The {required.replace('_', ' ')} field is required.", required)
        if body["account_number"] != self.account_number:
            return invalid("The account_number provided does not exist", "account_number")
        amount = body["amount"]
        if not isinstance(amount, int) or isinstance(amount, bool):
            return invalid("The amount must be an integer.", "amount")
        if amount < 100:
            return invalid("Minimum transaction amount should be 100 paise", "amount")
        if body["currency"] != "INR":
            return invalid("The currency must be INR.", "currency")
        fund_account = self.fund_accounts.get(body["fund_account_id"])
        if fund_account is None:
            return invalid("The id provided does not exist", "fund_account_id")
        mode = body["mode"]
        if mode not in BANK_MODES | {"UPI"}:
            return invalid("The selected mode is invalid.", "mode")
        if (mode == "UPI") != (fund_account["account_type"] == "vpa"):
            return invalid(
                f"Invalid combination of payout mode ({mode}) and beneficiary account type "
                f"({fund_account['account_type']})",
                "mode",
            )
        if body["purpose"] not in PURPOSES:
            return invalid("The selected purpose is invalid.", "purpose")
        if not NARRATION.match(str(body.get("narration") or "")):
            return invalid("The narration format is invalid.", "narration")
        if len(str(body.get("reference_id") or "")) > 40:
            return invalid("The reference id may not be greater than 40 characters.", "reference_id")
        if len(body.get("notes") or {}) > 15:
            return invalid("Number of fields in notes should be less than or equal to 15", "notes")
        if self.balance < amount + self.fees + self.tax and not body.get("queue_if_low_balance", False):
            return error(400, "Your account does not have enough balance to carry out the payout operation.")
        return None

    def _new_payout(self, body: dict[str, Any]) -> dict[str, Any]:
        amount = body["amount"]
        payout: dict[str, Any] = {
            "id": random_id("pout_"),
            "entity": "payout",
            "fund_account_id": body["fund_account_id"],
            "amount": amount,
            "currency": "INR",
            "notes": body.get("notes") or [],
            "fees": 0,
            "tax": 0,
            "status": "processing",
            "utr": None,
            "mode": body["mode"],
            "purpose": body["purpose"],
            "reference_id": body.get("reference_id"),
            "narration": body.get("narration"),
            "batch_id": None,
            "status_details": None,
            "created_at": int(time.time()),
        }
        if self.approval_workflow:
            payout["status"] = "pending"
            payout["status_details"] = {
                "description": "Payout is pending approval.",
                "source": "business",
                "reason": "pending_approval",
            }
        elif self.balance < amount + self.fees + self.tax:
            payout["status"] = "queued"
            payout["status_details"] = {
                "description": "Payout queued due to low balance. Add funds to your account to process it.",
                "source": "business",
                "reason": "low_balance",
            }
        else:
            self._debit(payout)
        self.payouts[payout["id"]] = payout
        return payout

    def _debit(self, payout: dict[str, Any]) -> None:
        payout["fees"], payout["tax"] = self.fees + self.tax, self.tax  # fees include tax
        self.balance -= payout["amount"] + payout["fees"]

    async def _get_payout(self, request: Request, body: Any, headers: dict[str, str]) -> Result:
        with self.lock:
            payout = self.payouts.get(request.path_params["id"])
            if payout is None:
                return invalid("The id provided does not exist", "id")
            return 200, dict(payout)

    async def _list_payouts(self, request: Request, body: Any, headers: dict[str, str]) -> Result:
        if request.query_params.get("account_number") != self.account_number:
            return invalid("The account number field is required.", "account_number")
        with self.lock:
            items = sorted(self.payouts.values(), key=lambda p: p["created_at"], reverse=True)
            reference = request.query_params.get("reference_id")
            items = [dict(p) for p in items if reference is None or p["reference_id"] == reference]
        return 200, {"entity": "collection", "count": len(items), "items": items}

    async def _cancel_payout(self, request: Request, body: Any, headers: dict[str, str]) -> Result:
        with self.lock:
            payout = self.payouts.get(request.path_params["id"])
            if payout is None:
                return invalid("The id provided does not exist", "id")
            if payout["status"] != "queued":
                return invalid("Only queued payouts can be cancelled", "id")
            payout["status"] = "cancelled"
            return 200, dict(payout)

    # -- what tests do to payouts ---------------------------------------------------------------
    def set_status(
        self,
        payout_id: str,
        status: str,
        *,
        reason: str | None = None,
        description: str | None = None,
        source: str = "beneficiary_bank",
        utr: str | None = None,
    ) -> dict[str, Any]:
        """Move a payout along a documented transition (anything else is a test bug: ValueError)."""
        with self.lock:
            payout = self.payouts[payout_id]
            if status not in TRANSITIONS[payout["status"]]:
                raise ValueError(f"RazorpayX never moves a payout from {payout['status']} to {status}")
            if status == "processing" and payout["fees"] == 0:
                self._debit(payout)
            if status == "processed":
                payout["utr"] = utr or random_id("HDFCN", 11).upper()
                payout["status_details"] = {
                    "description": "Payout is processed and the money has been credited.",
                    "source": "beneficiary_bank",
                    "reason": "payout_processed",
                }
            if status in {"failed", "reversed", "rejected", "cancelled"}:
                if payout["fees"] and status in {"failed", "reversed"}:
                    self.balance += payout["amount"] + payout["fees"]
                payout["status_details"] = {
                    "description": description or "The beneficiary bank account is closed.",
                    "source": source,
                    "reason": reason or "bank_account_closed",
                }
            payout["status"] = status
            return dict(payout)

    def expire_idempotency_keys(self) -> None:
        """What 7 days do: every key may be used again, and would make a new payout."""
        with self.lock:
            self._keys.clear()

    def payouts_for_reference(self, reference: str) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(p) for p in self.payouts.values() if p["reference_id"] == reference]

    # -- webhooks ------------------------------------------------------------------------------
    def webhook(
        self,
        payout_id: str,
        event: str | None = None,
        *,
        secret: str | None = None,
        event_id: str | None = None,
    ) -> tuple[dict[str, str], bytes]:
        """The headers and raw body RazorpayX would POST about this payout as it is now."""
        with self.lock:
            payout = dict(self.payouts[payout_id])
        envelope = {
            "entity": "event",
            "account_id": self.account_id,
            "event": event or EVENT_FOR_STATUS[payout["status"]],
            "contains": ["payout"],
            "payload": {"payout": {"entity": payout}},
            "created_at": int(time.time()),
        }
        body = json.dumps(envelope).encode()
        return self.sign(body, secret=secret, event_id=event_id), body

    def sign(self, body: bytes, *, secret: str | None = None, event_id: str | None = None) -> dict[str, str]:
        signature = hmac.new((secret or self.webhook_secret).encode(), body, hashlib.sha256).hexdigest()
        return {
            "Content-Type": "application/json",
            "X-Razorpay-Signature": signature,
            "X-Razorpay-Event-Id": event_id or random_id("", 14),
        }

    async def deliver(
        self,
        url: str,
        headers: dict[str, str],
        body: bytes,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> httpx.Response:
        """POST a webhook as RazorpayX does (5 s timeout; non-2xx means it will be retried)."""
        async with httpx.AsyncClient(transport=transport, timeout=5.0) as client:
            return await client.post(url, content=body, headers=headers)
