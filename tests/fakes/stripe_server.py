"""A local Stripe (Connect transfers and payouts, Express accounts and their onboarding links) that
answers as Stripe's docs and stripe-python say (shared/PROVIDERS.md part 1, B; docs.stripe.com
/api/accounts, /api/account_links, /connect/express-accounts).

Documented behaviour it reproduces:
- `Authorization: Bearer sk_…`; form-encoded bodies with `metadata[k]=v`; `Stripe-Account` acts on
  a connected account; errors as `{"error": {"type", "code", "message", "param", "doc_url"}}`.
- `Idempotency-Key` (≤255 chars), scoped per account: the first answer is stored once execution
  starts (a 500 too) and replayed with `Idempotent-Replayed: true`; other parameters or another
  endpoint with the key is 400 `idempotency_error`; a duplicate while the first runs is 409
  `idempotency_key_in_use`; validation failures are not stored.
- Transfers move platform balance to the connected account; reversals move it back. Payouts on a
  connected account: pending → in_transit → paid, pending → canceled, failed (even after paid).
- 429 for rate limits (and the legacy 400 with code rate_limit).
- Webhooks: event objects with `account` for Connect events, `Stripe-Signature: t=…,v1=…` (plus the
  test-mode `v0=`), connected-account events signed with the Connect endpoint's secret.
- Connect Express: `POST /v1/accounts` (type, country, email, `capabilities[transfers][requested]`,
  metadata) makes an account object (`object: "account"`, `type: "express"`, `details_submitted`,
  `charges_enabled` and `payouts_enabled` false, the requested capabilities `inactive`,
  `requirements.currently_due`, `controller`); `GET /v1/accounts/{id}`; `POST /v1/account_links`
  (account, type, refresh_url, return_url) answers `{"object": "account_link", "created",
  "expires_at", "url"}`, single-use and valid 300 s. A transfer to an account whose transfers
  capability is not active is refused (`insufficient_capabilities_for_transfer`). Onboarding itself
  happens on Stripe's pages: tests play the member's part with `complete_onboarding`, and Stripe
  reports the result in `account.updated` (with `data.previous_attributes`).
Wording no source confirmed (the 409 and 429 types and messages, some validation messages, the
account-link errors, which country codes are refused) follows Stripe's style.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.server import FakeBase, Fault, lower, random_id

Result = tuple[int, dict[str, Any]]
PLATFORM = "platform"
DOC = "https://stripe.com/docs/error-codes/"

# Payout state machine (stripe-python _payout.py, docs: a payout can fail even after paid).
TRANSITIONS: dict[str, set[str]] = {
    "pending": {"in_transit", "canceled", "failed", "paid"},
    "in_transit": {"paid", "failed"},
    "paid": {"failed"},
    "failed": set(),
    "canceled": set(),
}
EVENT_FOR_STATUS = {
    "pending": "payout.created",
    "in_transit": "payout.updated",
    "paid": "payout.paid",
    "failed": "payout.failed",
    "canceled": "payout.canceled",
}
FAILURE_MESSAGES = {
    "account_closed": "The bank account has been closed.",
    "account_frozen": "The bank account has been frozen.",
    "no_account": "The bank account details on file are probably incorrect. No bank account could be located.",
    "insufficient_funds": "Your Stripe account has insufficient funds to cover the payout.",
    "could_not_process": "The bank could not process this payout.",
}


def stripe_error(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> Result:
    body: dict[str, Any] = {"message": message, "type": type_}
    if code:
        body["code"] = code
        body["doc_url"] = DOC + code.replace("_", "-")
    if param:
        body["param"] = param
    return status, {"error": body}


class Invalid(Exception):
    """A parameter check failed before execution: answered, but not stored under the key."""

    def __init__(self, result: Result) -> None:
        self.result = result


def missing(param: str) -> Invalid:
    return Invalid(
        stripe_error(400, f"Missing required param: {param}.", code="parameter_missing", param=param)
    )


def positive_int(params: dict[str, Any], name: str) -> int:
    if name not in params:
        raise missing(name)
    value = params[name]
    if not str(value).isdigit() or int(value) <= 0:
        raise Invalid(
            stripe_error(
                400, f"Invalid positive integer: {value}", code="parameter_invalid_integer", param=name
            )
        )
    return int(value)


def currency(params: dict[str, Any]) -> str:
    if "currency" not in params:
        raise missing("currency")
    value = str(params["currency"])
    if len(value) != 3 or not value.isalpha():
        raise Invalid(stripe_error(400, f"Invalid currency: {value}", param="currency"))
    return value.lower()


def parse_form(raw: bytes) -> dict[str, Any]:
    """`a=1&metadata[k]=v&capabilities[transfers][requested]=true` → {"a": "1", "metadata": {"k":
    "v"}, "capabilities": {"transfers": {"requested": "true"}}} (Stripe's nested form encoding)."""
    params: dict[str, Any] = {}
    for key, value in parse_qsl(raw.decode(), keep_blank_values=True):
        head, _, rest = key.partition("[")
        names = [head] + (rest[:-1].split("][") if rest.endswith("]") else [])
        node = params
        for name in names[:-1]:
            child = node.setdefault(name, {})
            if not isinstance(child, dict):
                raise Invalid(stripe_error(400, f"Invalid object: {key}", param=head))
            node = child
        node[names[-1]] = value
    return params


def boolean(value: Any, param: str) -> bool:
    if value in ("true", "false"):
        return bool(value == "true")
    raise Invalid(stripe_error(400, f"Invalid boolean: {value}", param=param))


def check_metadata(params: dict[str, Any]) -> dict[str, str]:
    metadata = params.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise Invalid(stripe_error(400, "Invalid object", param="metadata"))
    if len(metadata) > 50:
        raise Invalid(stripe_error(400, "You can have at most 50 keys in metadata.", param="metadata"))
    for k, v in metadata.items():
        if len(k) > 40:
            raise Invalid(
                stripe_error(400, f"Metadata keys can be at most 40 characters: {k}", param=f"metadata[{k}]")
            )
        if len(str(v)) > 500:
            raise Invalid(
                stripe_error(400, "Metadata values can be at most 500 characters.", param=f"metadata[{k}]")
            )
    return {str(k): str(v) for k, v in metadata.items()}


# Countries Express accounts can be created in (docs.stripe.com/connect/express-accounts lists the
# platforms' countries; accounts may be in a few more). Anything else is answered as Stripe answers
# a code it does not know.
EXPRESS_COUNTRIES = frozenset(
    [
        "AT",
        "AU",
        "BE",
        "BG",
        "BR",
        "CA",
        "CH",
        "CY",
        "CZ",
        "DE",
        "DK",
        "EE",
        "ES",
        "FI",
        "FR",
        "GB",
        "GI",
        "GR",
        "HK",
        "HR",
        "HU",
        "IE",
        "IT",
        "JP",
        "LI",
        "LT",
        "LU",
        "LV",
        "MT",
        "MX",
        "NL",
        "NO",
        "NZ",
        "PL",
        "PT",
        "RO",
        "SE",
        "SG",
        "SI",
        "SK",
        "TH",
        "US",
    ]
)
DEFAULT_CURRENCY = {"US": "usd", "GB": "gbp", "CA": "cad", "AU": "aud", "JP": "jpy", "CH": "chf"}
CAPABILITIES = frozenset({"transfers", "card_payments", "tax_reporting_us_1099_k", "legacy_payments"})
ONBOARDING_FIELDS = [
    "business_profile.mcc",
    "business_profile.url",
    "business_type",
    "external_account",
    "tos_acceptance.date",
    "tos_acceptance.ip",
]
LINK_SECONDS = 300


@dataclass
class Account:
    id: str
    balance: dict[str, int] = field(default_factory=dict)
    external_accounts: list[str] = field(default_factory=list)
    obj: dict[str, Any] | None = None  # the account object, for accounts made with POST /v1/accounts
    reported: dict[str, Any] | None = None  # the object as the last account.updated showed it


@dataclass
class Stored:
    fingerprint: tuple[str, str, str]
    status: int = 0
    body: dict[str, Any] = field(default_factory=dict)
    done: bool = False


class FakeStripe(FakeBase):
    def __init__(
        self,
        *,
        api_key: str = "sk_test_fakeplatformkey000000000001",
        webhook_secret: str = "whsec_fake_platform_endpoint_secret",
        connect_webhook_secret: str = "whsec_fake_connect_endpoint_secret",
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.webhook_secret = webhook_secret
        self.connect_webhook_secret = connect_webhook_secret
        self.platform_balance: dict[str, int] = {}
        self.default_balance = 10**12
        self.accounts: dict[str, Account] = {}
        self.transfers: dict[str, dict[str, Any]] = {}
        self.payouts: dict[str, dict[str, Any]] = {}
        self.payout_account: dict[str, str] = {}
        self.account_links: dict[str, dict[str, Any]] = {}  # url -> account, expires_at, used
        self._keys: dict[tuple[str, str], Stored] = {}
        self.app = Starlette(
            routes=[
                Route("/v1/transfers", self._wrap(self._create_transfer), methods=["POST"]),
                Route("/v1/transfers", self._wrap(self._list_transfers), methods=["GET"]),
                Route("/v1/transfers/{id}", self._wrap(self._get_transfer), methods=["GET"]),
                Route("/v1/transfers/{id}/reversals", self._wrap(self._reverse_transfer), methods=["POST"]),
                Route("/v1/payouts", self._wrap(self._create_payout), methods=["POST"]),
                Route("/v1/payouts", self._wrap(self._list_payouts), methods=["GET"]),
                Route("/v1/payouts/{id}", self._wrap(self._get_payout), methods=["GET"]),
                Route("/v1/payouts/{id}/cancel", self._wrap(self._cancel_payout), methods=["POST"]),
                Route("/v1/accounts", self._wrap(self._create_account), methods=["POST"]),
                Route("/v1/accounts/{id}", self._wrap(self._get_account), methods=["GET"]),
                Route("/v1/account_links", self._wrap(self._create_account_link), methods=["POST"]),
            ]
        )

    # -- set-up ----------------------------------------------------------------------------------
    def add_account(self, balances: dict[str, int] | None = None) -> str:
        """A connected account with one bank account (`ba_…`) as its default external account."""
        account = Account(random_id("acct_", 16), dict(balances or {}), [random_id("ba_", 24)])
        with self.lock:
            self.accounts[account.id] = account
        return account.id

    def balance_of(self, account_id: str | None, currency_code: str) -> int:
        with self.lock:
            if account_id is None:
                return self.platform_balance.get(currency_code, self.default_balance)
            return self.accounts[account_id].balance.get(currency_code, 0)

    def _add(self, account_id: str, currency_code: str, amount: int) -> None:
        if account_id == PLATFORM:
            self.platform_balance[currency_code] = (
                self.platform_balance.get(currency_code, self.default_balance) + amount
            )
        else:
            balance = self.accounts[account_id].balance
            balance[currency_code] = balance.get(currency_code, 0) + amount

    # -- plumbing ------------------------------------------------------------------------------
    def _wrap(
        self, handler: Callable[[Request, dict[str, Any], str], Awaitable[Result]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            raw = await request.body()
            headers = lower(request.headers)
            recorded = self._record(request.method, request.url.path, headers, raw)
            status, body, extra = await self._handle(request, handler, raw, headers)
            recorded.status = status
            response_headers = {"Request-Id": random_id("req_"), **extra}
            return JSONResponse(body, status_code=status, headers=response_headers)

        return endpoint

    def _auth(self, headers: dict[str, str]) -> Result | None:
        header = headers.get("authorization", "")
        if not header:
            return stripe_error(
                401,
                "You did not provide an API key. You need to provide your API key in the Authorization header, "
                "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            )
        token = header.removeprefix("Bearer ").strip()
        if not hmac.compare_digest(token, self.api_key):
            return stripe_error(401, f"Invalid API Key provided: {token[:8]}{'*' * 12}{token[-4:]}")
        return None

    async def _handle(
        self,
        request: Request,
        handler: Callable[[Request, dict[str, Any], str], Awaitable[Result]],
        raw: bytes,
        headers: dict[str, str],
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        method, path = request.method, request.url.path
        refused = self._auth(headers)
        if refused:
            return (*refused, {})
        scope = headers.get("stripe-account") or PLATFORM
        if scope != PLATFORM and scope not in self.accounts:
            return (
                *stripe_error(
                    403,
                    f"The provided key '{self.api_key[:8]}{'*' * 12}{self.api_key[-4:]}' does not have access to "
                    f"account '{scope}' (or that account does not exist). Application access may have been revoked.",
                    code="account_invalid",
                ),
                {},
            )
        if fault := self.faults.take("rate_limit", method, path):
            status = 400 if fault.legacy else 429
            extra = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            result = stripe_error(
                status,
                "Too many requests hit the API too quickly. We recommend an exponential backoff of your requests.",
                code="rate_limit",
            )
            return (*result, extra)
        if fault := self.faults.take("error_before", method, path):
            return (*stripe_error(fault.status, "An unknown error occurred", type_="api_error"), {})
        try:
            params = parse_form(raw) if method == "POST" else dict(request.query_params)
        except Invalid as exc:
            return (*exc.result, {})
        key = headers.get("idempotency-key")
        if method != "POST" or key is None:
            status, body = await self._run(request, handler, params, scope)
            return status, body, {}
        if len(key) > 255:
            return (*stripe_error(400, "Idempotency keys can be no longer than 255 characters."), {})
        fingerprint = (method, path, json.dumps(params, sort_keys=True))
        with self.lock:
            stored = self._keys.get((scope, key))
            if stored is not None:
                if not stored.done:
                    return (
                        *stripe_error(
                            409,
                            "There is currently another in-progress request using this Idempotent Key (that "
                            "probably means you submitted twice, and the other request is still going "
                            f"through): {key}. Please try again later.",
                            code="idempotency_key_in_use",
                        ),
                        {},
                    )
                if stored.fingerprint != fingerprint:
                    return (
                        *stripe_error(
                            400,
                            "Keys for idempotent requests can only be used with the same parameters they were "
                            f"first used with. Try using a key other than '{key}' if you meant to execute a "
                            "different request.",
                            type_="idempotency_error",
                        ),
                        {},
                    )
                return stored.status, stored.body, {"Idempotent-Replayed": "true"}
            stored = Stored(fingerprint)
            self._keys[(scope, key)] = stored
        try:
            if fault := self.faults.take("hold", method, path):
                await asyncio.sleep(fault.seconds)
            if fault := self.faults.take("stored_error", method, path):
                # Execution began and broke: Stripe stores the 500 and replays it for the key.
                status, body = stripe_error(500, "An unknown error occurred", type_="api_error")
            else:
                try:
                    status, body = await handler(request, params, scope)
                except Invalid as exc:
                    with self.lock:
                        del self._keys[(scope, key)]  # not stored: safe to retry
                    return (*exc.result, {})
            with self.lock:
                stored.status, stored.body, stored.done = status, body, True
        except BaseException:
            with self.lock:
                self._keys.pop((scope, key), None)
            raise
        if 200 <= status < 300 and (fault := self.faults.take("error_after", method, path)):
            return (*stripe_error(fault.status, "An unknown error occurred", type_="api_error"), {})
        return status, body, {}

    async def _run(
        self,
        request: Request,
        handler: Callable[[Request, dict[str, Any], str], Awaitable[Result]],
        params: dict[str, Any],
        scope: str,
    ) -> Result:
        try:
            return await handler(request, params, scope)
        except Invalid as exc:
            return exc.result

    def rate_limit_next(
        self,
        *,
        count: int = 1,
        retry_after: float | None = None,
        method: str | None = None,
        path: str | None = None,
        legacy: bool = False,
    ) -> None:
        super().rate_limit_next(count=count, retry_after=retry_after, method=method, path=path)
        if legacy:
            self.faults.faults[-1].legacy = True

    def expire_idempotency_keys(self) -> None:
        """What 24 hours may do: Stripe prunes keys, which may then be used again."""
        with self.lock:
            self._keys.clear()

    def store_error_next(self, *, count: int = 1, method: str = "POST", path: str | None = None) -> None:
        """The next matching request starts executing and breaks with a 500 that Stripe stores under
        its idempotency key: every retry with that key gets the same 500."""
        self.faults.add(Fault("stored_error", method, path, count, status=500))

    # -- transfers --------------------------------------------------------------------------------
    async def _create_transfer(self, request: Request, params: dict[str, Any], scope: str) -> Result:
        amount = positive_int(params, "amount")
        code = currency(params)
        destination = params.get("destination")
        if not destination:
            raise missing("destination")
        with self.lock:
            if destination not in self.accounts:
                raise Invalid(
                    stripe_error(
                        400,
                        f"No such destination: '{destination}'",
                        code="resource_missing",
                        param="destination",
                    )
                )
            made = self.accounts[destination].obj
            if made is not None and made["capabilities"].get("transfers") != "active":
                return stripe_error(
                    400,
                    "Your destination account needs to have at least one of the following capabilities "
                    "enabled: transfers, crypto_transfers, legacy_payments",
                    code="insufficient_capabilities_for_transfer",
                    param="destination",
                )
            if self.balance_of(None, code) < amount:
                # Execution started: Stripe stores this answer under the key.
                return stripe_error(
                    400,
                    "You have insufficient available funds in your Stripe account. Try adding funds directly to "
                    "your available balance by creating Charges using the 4000000000000077 test card. See: "
                    "https://stripe.com/docs/testing#available-balance",
                    code="balance_insufficient",
                )
            transfer = {
                "id": random_id("tr_", 24),
                "object": "transfer",
                "amount": amount,
                "amount_reversed": 0,
                "balance_transaction": random_id("txn_", 24),
                "created": int(time.time()),
                "currency": code,
                "description": None,
                "destination": destination,
                "destination_payment": random_id("py_", 24),
                "livemode": False,
                "metadata": params.get("metadata") or {},
                "reversals": {"object": "list", "data": [], "has_more": False, "total_count": 0},
                "reversed": False,
                "source_transaction": params.get("source_transaction"),
                "source_type": "card",
                "transfer_group": params.get("transfer_group"),
            }
            transfer["reversals"]["url"] = f"/v1/transfers/{transfer['id']}/reversals"
            self._add(PLATFORM, code, -amount)
            self._add(destination, code, amount)
            self.transfers[transfer["id"]] = transfer
            return 200, json.loads(json.dumps(transfer))

    @staticmethod
    def _list(url: str, items: list[dict[str, Any]], params: dict[str, Any]) -> Result:
        limit = int(params.get("limit", 10))
        if not 1 <= limit <= 100:
            raise Invalid(
                stripe_error(400, "Invalid integer: limit must be between 1 and 100", param="limit")
            )
        items = sorted(items, key=lambda o: o["created"], reverse=True)  # newest first
        data = json.loads(json.dumps(items[:limit]))
        return 200, {"object": "list", "data": data, "has_more": len(items) > limit, "url": url}

    async def _list_transfers(self, request: Request, params: dict[str, Any], scope: str) -> Result:
        group = params.get("transfer_group")
        with self.lock:
            items = [
                t
                for t in self.transfers.values()
                if scope == PLATFORM and (group is None or t["transfer_group"] == group)
            ]
            return self._list("/v1/transfers", items, params)

    async def _list_payouts(self, request: Request, params: dict[str, Any], scope: str) -> Result:
        with self.lock:
            items = [p for p in self.payouts.values() if self.payout_account[p["id"]] == scope]
            return self._list("/v1/payouts", items, params)

    async def _get_transfer(self, request: Request, params: dict[str, Any], scope: str) -> Result:
        with self.lock:
            transfer = self.transfers.get(request.path_params["id"])
            if transfer is None or scope != PLATFORM:
                return stripe_error(
                    404,
                    f"No such transfer: '{request.path_params['id']}'",
                    code="resource_missing",
                    param="id",
                )
            return 200, json.loads(json.dumps(transfer))

    async def _reverse_transfer(self, request: Request, params: dict[str, Any], scope: str) -> Result:
        with self.lock:
            transfer = self.transfers.get(request.path_params["id"])
            if transfer is None or scope != PLATFORM:
                raise Invalid(
                    stripe_error(
                        404,
                        f"No such transfer: '{request.path_params['id']}'",
                        code="resource_missing",
                        param="id",
                    )
                )
            remaining = transfer["amount"] - transfer["amount_reversed"]
            amount = positive_int(params, "amount") if "amount" in params else remaining
            if amount > remaining:
                raise Invalid(
                    stripe_error(
                        400, "The reversal amount exceeds the transfer's remaining amount.", param="amount"
                    )
                )
            return self._apply_reversal(transfer, amount, params.get("metadata") or {})

    def _apply_reversal(self, transfer: dict[str, Any], amount: int, metadata: dict[str, Any]) -> Result:
        code, account = transfer["currency"], transfer["destination"]
        if self.accounts[account].balance.get(code, 0) < amount:
            return stripe_error(
                400,
                "The connected account's balance is too low to reverse this transfer.",
                code="balance_insufficient",
            )
        reversal = {
            "id": random_id("trr_", 24),
            "object": "transfer_reversal",
            "amount": amount,
            "created": int(time.time()),
            "currency": code,
            "metadata": metadata,
            "transfer": transfer["id"],
        }
        self._add(account, code, -amount)
        self._add(PLATFORM, code, amount)
        transfer["amount_reversed"] += amount
        transfer["reversed"] = transfer["amount_reversed"] == transfer["amount"]
        transfer["reversals"]["data"].append(reversal)
        transfer["reversals"]["total_count"] += 1
        return 200, dict(reversal)

    def reverse_transfer(self, transfer_id: str) -> dict[str, Any]:
        """Staff reversed a transfer in the Dashboard."""
        with self.lock:
            transfer = self.transfers[transfer_id]
            status, body = self._apply_reversal(
                transfer, transfer["amount"] - transfer["amount_reversed"], {}
            )
            assert status == 200, body
            return json.loads(json.dumps(transfer))

    # -- payouts ----------------------------------------------------------------------------------
    async def _create_payout(self, request: Request, params: dict[str, Any], scope: str) -> Result:
        amount = positive_int(params, "amount")
        code = currency(params)
        method = params.get("method", "standard")
        if method not in {"standard", "instant"}:
            raise Invalid(
                stripe_error(400, "Invalid method: must be one of standard or instant", param="method")
            )
        descriptor = params.get("statement_descriptor")
        if descriptor is not None and len(descriptor) > 22:
            raise Invalid(
                stripe_error(
                    400,
                    f"Invalid string: {descriptor}; must be at most 22 characters",
                    param="statement_descriptor",
                )
            )
        with self.lock:
            externals = self.accounts[scope].external_accounts if scope != PLATFORM else ["ba_platformbank"]
            destination = params.get("destination") or externals[0]
            if destination not in externals:
                raise Invalid(
                    stripe_error(
                        404,
                        f"No such external account: '{destination}'",
                        code="resource_missing",
                        param="destination",
                    )
                )
            available = self.balance_of(None if scope == PLATFORM else scope, code)
            if available < amount:
                return stripe_error(
                    400,
                    "You have insufficient funds in your Stripe account for this transfer. Your card balance is too "
                    "low. You can use the /v1/balance endpoint to view your Stripe balance (for more details, see "
                    "stripe.com/docs/api#balance).",
                    code="balance_insufficient",
                )
            created = int(time.time())
            payout = {
                "id": random_id("po_", 24),
                "object": "payout",
                "amount": amount,
                "arrival_date": created + 2 * 86400,
                "automatic": False,
                "balance_transaction": random_id("txn_", 24),
                "created": created,
                "currency": code,
                "description": None,
                "destination": destination,
                "failure_balance_transaction": None,
                "failure_code": None,
                "failure_message": None,
                "livemode": False,
                "metadata": params.get("metadata") or {},
                "method": method,
                "original_payout": None,
                "reversed_by": None,
                "source_type": "card",
                "statement_descriptor": descriptor,
                "status": "pending",
                "type": "bank_account",
            }
            self._add(scope, code, -amount)
            self.payouts[payout["id"]] = payout
            self.payout_account[payout["id"]] = scope
            return 200, json.loads(json.dumps(payout))

    def _payout_in_scope(self, payout_id: str, scope: str) -> dict[str, Any]:
        payout = self.payouts.get(payout_id)
        if payout is None or self.payout_account[payout_id] != scope:
            raise Invalid(
                stripe_error(404, f"No such payout: '{payout_id}'", code="resource_missing", param="id")
            )
        return payout

    async def _get_payout(self, request: Request, params: dict[str, Any], scope: str) -> Result:
        with self.lock:
            return 200, json.loads(json.dumps(self._payout_in_scope(request.path_params["id"], scope)))

    async def _cancel_payout(self, request: Request, params: dict[str, Any], scope: str) -> Result:
        with self.lock:
            payout = self._payout_in_scope(request.path_params["id"], scope)
            if payout["status"] != "pending":
                return stripe_error(400, "Payouts can only be canceled while they are pending.")
            self._set(payout, "canceled")
            return 200, json.loads(json.dumps(payout))

    def set_payout_status(
        self, payout_id: str, status: str, *, failure_code: str | None = None
    ) -> dict[str, Any]:
        """Move a payout along a documented transition (anything else is a test bug: ValueError)."""
        with self.lock:
            payout = self.payouts[payout_id]
            if status not in TRANSITIONS[payout["status"]]:
                raise ValueError(f"Stripe never moves a payout from {payout['status']} to {status}")
            if status == "failed":
                code = failure_code or "account_closed"
                payout["failure_code"] = code
                payout["failure_message"] = FAILURE_MESSAGES.get(code, "The payout failed.")
                payout["failure_balance_transaction"] = random_id("txn_", 24)
            self._set(payout, status)
            return json.loads(json.dumps(payout))

    def _set(self, payout: dict[str, Any], status: str) -> None:
        if status in {"failed", "canceled"}:
            self._add(self.payout_account[payout["id"]], payout["currency"], payout["amount"])
        payout["status"] = status

    # -- Connect Express accounts and onboarding ---------------------------------------------------
    async def _create_account(self, request: Request, params: dict[str, Any], scope: str) -> Result:
        if scope != PLATFORM:
            raise Invalid(
                stripe_error(
                    400, "Connected accounts cannot create other accounts.", type_="invalid_request_error"
                )
            )
        account_type = params.get("type")
        if account_type is None:
            raise missing("type")
        if account_type not in {"standard", "express", "custom"}:
            raise Invalid(
                stripe_error(
                    400,
                    f"Invalid type: must be one of custom, express, or standard: {account_type}",
                    param="type",
                )
            )
        country = str(params.get("country") or "US")
        if country not in EXPRESS_COUNTRIES:
            raise Invalid(
                stripe_error(
                    400,
                    f"Country '{country}' is unknown. Try using a 2-character alphanumeric country code instead, "
                    "such as 'US', 'EG', or 'GB'. A full list of country codes is available at "
                    "https://stripe.com/global",
                    param="country",
                )
            )
        email = params.get("email")
        if email is not None and ("@" not in email or len(email) > 800):
            raise Invalid(
                stripe_error(400, f"Invalid email address: {email}", code="email_invalid", param="email")
            )
        requested = params.get("capabilities") or {}
        if not isinstance(requested, dict):
            raise Invalid(stripe_error(400, "Invalid object", param="capabilities"))
        capabilities: dict[str, str] = {}
        for name, settings in requested.items():
            if name not in CAPABILITIES:
                raise Invalid(
                    stripe_error(
                        400,
                        f"Received unknown parameter: capabilities[{name}]",
                        param=f"capabilities[{name}]",
                    )
                )
            if not isinstance(settings, dict) or "requested" not in settings:
                raise missing(f"capabilities[{name}][requested]")
            if boolean(settings["requested"], f"capabilities[{name}][requested]"):
                capabilities[name] = "inactive"  # until Stripe has what it needs and has verified it
        if account_type == "custom" and not capabilities:
            raise missing("capabilities")
        metadata = check_metadata(params)
        account_id = random_id("acct_", 16)
        obj: dict[str, Any] = {
            "id": account_id,
            "object": "account",
            "business_profile": {
                "annual_revenue": None,
                "estimated_worker_count": None,
                "mcc": None,
                "name": None,
                "product_description": None,
                "support_address": None,
                "support_email": None,
                "support_phone": None,
                "support_url": None,
                "url": None,
            },
            "business_type": None,
            "capabilities": capabilities,
            "charges_enabled": False,
            "controller": {
                "fees": {"payer": "application_express" if account_type == "express" else "application"},
                "is_controller": True,
                "losses": {"payments": "application"},
                "requirement_collection": "stripe" if account_type != "custom" else "application",
                "stripe_dashboard": {"type": account_type if account_type != "custom" else "none"},
                "type": "application",
            },
            "country": country,
            "created": int(time.time()),
            "default_currency": DEFAULT_CURRENCY.get(country, "eur"),
            "details_submitted": False,
            "email": email,
            "external_accounts": {
                "object": "list",
                "data": [],
                "has_more": False,
                "total_count": 0,
                "url": f"/v1/accounts/{account_id}/external_accounts",
            },
            "future_requirements": {
                "alternatives": [],
                "current_deadline": None,
                "currently_due": [],
                "disabled_reason": None,
                "errors": [],
                "eventually_due": [],
                "past_due": [],
                "pending_verification": [],
            },
            "login_links": {
                "object": "list",
                "data": [],
                "has_more": False,
                "total_count": 0,
                "url": f"/v1/accounts/{account_id}/login_links",
            },
            "metadata": metadata,
            "payouts_enabled": False,
            "requirements": {
                "alternatives": [],
                "current_deadline": None,
                "currently_due": list(ONBOARDING_FIELDS),
                "disabled_reason": "requirements.past_due",
                "errors": [],
                "eventually_due": list(ONBOARDING_FIELDS),
                "past_due": list(ONBOARDING_FIELDS),
                "pending_verification": [],
            },
            "settings": {
                "payouts": {
                    "debit_negative_balances": True,
                    "schedule": {"delay_days": 2, "interval": "daily"},
                    "statement_descriptor": None,
                }
            },
            "tos_acceptance": {"date": None, "ip": None, "user_agent": None},
            "type": account_type,
        }
        with self.lock:
            self.accounts[account_id] = Account(
                account_id, {}, [], obj=obj, reported=json.loads(json.dumps(obj))
            )
            return 200, json.loads(json.dumps(obj))

    def _account_in_scope(self, account_id: str, scope: str) -> dict[str, Any]:
        account = self.accounts.get(account_id)
        if account is None or account.obj is None or scope not in (PLATFORM, account_id):
            raise Invalid(
                stripe_error(
                    404, f"No such account: '{account_id}'", code="resource_missing", param="account"
                )
            )
        return account.obj

    async def _get_account(self, request: Request, params: dict[str, Any], scope: str) -> Result:
        with self.lock:
            return 200, json.loads(json.dumps(self._account_in_scope(request.path_params["id"], scope)))

    async def _create_account_link(self, request: Request, params: dict[str, Any], scope: str) -> Result:
        account_id = params.get("account")
        if not account_id:
            raise missing("account")
        link_type = params.get("type")
        if not link_type:
            raise missing("type")
        if link_type not in {"account_onboarding", "account_update"}:
            raise Invalid(
                stripe_error(
                    400,
                    f"Invalid type: must be one of account_onboarding or account_update: {link_type}",
                    param="type",
                )
            )
        for name in ("refresh_url", "return_url"):
            url = params.get(name)
            if url is not None and not (url.startswith("https://") or url.startswith("http://")):
                raise Invalid(stripe_error(400, f"Not a valid URL: {url}", code="url_invalid", param=name))
        with self.lock:
            account = self.accounts.get(account_id)
            if account is None or account.obj is None:
                raise Invalid(
                    stripe_error(
                        400, f"No such account: '{account_id}'", code="resource_missing", param="account"
                    )
                )
            if (
                link_type == "account_update"
                and account.obj["controller"]["requirement_collection"] == "stripe"
            ):
                raise Invalid(
                    stripe_error(
                        400,
                        "You cannot create `account_update` type Account Links for accounts that have access to a "
                        "Stripe-hosted Dashboard.",
                        param="type",
                    )
                )
            created = int(time.time())
            letter = {"express": "e", "standard": "s"}.get(account.obj["type"], "c")
            url = f"https://connect.stripe.com/setup/{letter}/{account_id}/{random_id('', 12)}"
            link = {
                "object": "account_link",
                "created": created,
                "expires_at": created + LINK_SECONDS,
                "url": url,
            }
            self.account_links[url] = {
                "account": account_id,
                "expires_at": created + LINK_SECONDS,
                "used": False,
                "refresh_url": params.get("refresh_url"),
                "return_url": params.get("return_url"),
            }
            return 200, dict(link)

    def complete_onboarding(self, account_id: str, *, verified: bool = True) -> dict[str, Any]:
        """The member fills in Stripe's onboarding pages (identity, bank account, terms). With
        `verified`, Stripe has checked it all: the transfers capability is active and payouts are
        enabled; without, the details are in and Stripe is still verifying them."""
        with self.lock:
            account = self.accounts[account_id]
            obj = account.obj
            assert obj is not None, "only accounts made with POST /v1/accounts are onboarded"
            if not account.external_accounts:
                bank = random_id("ba_", 24)
                account.external_accounts.append(bank)
                obj["external_accounts"]["data"] = [
                    {
                        "id": bank,
                        "object": "bank_account",
                        "account": account_id,
                        "bank_name": "STRIPE TEST BANK",
                        "country": obj["country"],
                        "currency": obj["default_currency"],
                        "default_for_currency": True,
                        "last4": "6789",
                        "status": "new",
                    }
                ]
                obj["external_accounts"]["total_count"] = 1
            obj["details_submitted"] = True
            obj["business_type"] = "individual"
            obj["tos_acceptance"] = {"date": int(time.time()), "ip": "203.0.113.7", "user_agent": None}
            pending = [] if verified else ["individual.verification.document"]
            obj["requirements"].update(
                currently_due=[],
                eventually_due=[],
                past_due=[],
                pending_verification=pending,
                disabled_reason=None if verified else "requirements.pending_verification",
            )
            for name in obj["capabilities"]:
                obj["capabilities"][name] = "active" if verified else "pending"
            obj["payouts_enabled"] = verified
            obj["charges_enabled"] = verified and "card_payments" in obj["capabilities"]
            for link in self.account_links.values():
                if link["account"] == account_id:
                    link["used"] = True
            return json.loads(json.dumps(obj))

    def restrict(self, account_id: str, reason: str = "requirements.past_due") -> dict[str, Any]:
        """Stripe needs more from the member (a deadline passed): payouts and transfers stop."""
        with self.lock:
            obj = self.accounts[account_id].obj
            assert obj is not None
            obj["requirements"].update(
                currently_due=["individual.id_number"],
                past_due=["individual.id_number"],
                disabled_reason=reason,
            )
            for name in obj["capabilities"]:
                obj["capabilities"][name] = "inactive"
            obj["payouts_enabled"] = False
            obj["charges_enabled"] = False
            return json.loads(json.dumps(obj))

    def _account_event(self, account_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The account as it is now, and `previous_attributes`: the top-level fields that changed
        since the last `account.updated` with their values then."""
        account = self.accounts[account_id]
        assert account.obj is not None
        obj = json.loads(json.dumps(account.obj))
        before = account.reported or {}
        previous = {k: before.get(k) for k, v in obj.items() if before.get(k) != v}
        account.reported = json.loads(json.dumps(obj))
        return obj, previous

    # -- webhooks ---------------------------------------------------------------------------------
    def event(self, object_id: str, event_type: str | None = None) -> dict[str, Any]:
        """The event Stripe would send about this payout, transfer or connected account as it is now
        (for an account: `account.updated`, sent to the Connect endpoint)."""
        previous: dict[str, Any] | None = None
        with self.lock:
            if object_id.startswith("acct_"):
                obj, previous = self._account_event(object_id)
                account = object_id
                event_type = event_type or "account.updated"
            elif object_id.startswith("po_"):
                obj = json.loads(json.dumps(self.payouts[object_id]))
                account = self.payout_account[object_id]
                event_type = event_type or EVENT_FOR_STATUS[obj["status"]]
            else:
                obj = json.loads(json.dumps(self.transfers[object_id]))
                account = PLATFORM
                event_type = event_type or ("transfer.reversed" if obj["reversed"] else "transfer.created")
        event: dict[str, Any] = {
            "id": random_id("evt_", 24),
            "object": "event",
            "api_version": "2025-03-31.basil",
            "created": int(time.time()),
            "data": {"object": obj} if previous is None else {"object": obj, "previous_attributes": previous},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": event_type,
        }
        if account != PLATFORM:
            event["account"] = account  # Connect events name the connected account
        return event

    def sign(
        self,
        body: bytes,
        *,
        secret: str | None = None,
        timestamp: int | None = None,
        connect: bool = False,
        test_mode_v0: bool = True,
    ) -> dict[str, str]:
        t = int(time.time()) if timestamp is None else timestamp
        key = secret or (self.connect_webhook_secret if connect else self.webhook_secret)
        v1 = hmac.new(key.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
        header = f"t={t},v1={v1}"
        if test_mode_v0:
            header += ",v0=" + hashlib.sha256(body).hexdigest()  # a dummy, as test mode sends
        return {"Content-Type": "application/json; charset=utf-8", "Stripe-Signature": header}

    def webhook(
        self, object_id: str, event_type: str | None = None, **sign: Any
    ) -> tuple[dict[str, str], bytes, dict[str, Any]]:
        event = self.event(object_id, event_type)
        body = json.dumps(event, indent=2).encode()  # Stripe pretty-prints its webhook bodies
        sign.setdefault("connect", "account" in event)
        return self.sign(body, **sign), body, event

    async def deliver(
        self,
        url: str,
        headers: dict[str, str],
        body: bytes,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, timeout=10.0) as client:
            return await client.post(url, content=body, headers=headers)
