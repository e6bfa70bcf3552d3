"""Helpers shared by the withdrawal tests (this module holds no tests): payout methods that can be
paid at once, withdrawal requests, running the worker's consumer for one withdrawal, balances and
reconciliation, and app settings that point the providers at the local fakes."""

from __future__ import annotations

import random
import secrets
import uuid
from datetime import timedelta
from typing import Any

import httpx
import orjson

from referloop import ledger
from referloop.core.db import utcnow
from referloop.core.outbox.consumers import handle_once, registry
from referloop.payouts.methods.models import PayoutMethod
from referloop.payouts.methods.service import _DETAILS_CONTEXT
from referloop.payouts.withdrawals import tasks
from referloop.runtime import Runtime
from tests.factories import Member, db_rows
from tests.fakes import FakeRazorpayX, FakeStripe, provider_settings

PROVIDER_FIELDS = (
    "payout_provider_timeout_seconds",
    "payout_provider_retry_base_seconds",
    "payout_provider_retry_max_seconds",
    "razorpayx_base_url",
    "razorpayx_key_id",
    "razorpayx_key_secret",
    "razorpayx_account_number",
    "razorpayx_webhook_secret",
    "stripe_base_url",
    "stripe_api_key",
    "stripe_webhook_secret",
    "stripe_connect_webhook_secret",
)


def provider_overrides(
    razorpayx: FakeRazorpayX | None = None, stripe: FakeStripe | None = None, **extra: Any
) -> dict[str, Any]:
    """Settings overrides (for `app_factory`) that make the providers talk to the local fakes."""
    settings = provider_settings(razorpayx, stripe)
    return {name: getattr(settings, name) for name in PROVIDER_FIELDS} | extra


def bank_account() -> dict[str, str]:
    return {
        "kind": "bank_account",
        "holder_name": "Asha Rao",
        "account_number": str(random.randint(10**11, 10**12 - 1)),
        "ifsc": "HDFC0001234",
    }


async def usable_method(
    client: httpx.AsyncClient, rt: Runtime, member: Member, body: dict[str, Any] | None = None
) -> str:
    """A payout method added through the API, its 24-hour cool-down then moved into the past."""
    r = await client.post(
        "/v1/payout-methods",
        json=body or bank_account(),
        headers={**member.auth, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert r.status_code == 201, r.text
    method_id: str = r.json()["id"]
    await end_cool_down(rt, method_id)
    return method_id


async def end_cool_down(rt: Runtime, method_id: str) -> None:
    """As if the method's 24-hour cool-down had passed."""
    await db_rows(
        rt, "UPDATE payout_methods SET usable_from = now() - interval '1 second' WHERE id = :id", id=method_id
    )


async def stripe_method(
    rt: Runtime, member_id: str, account_id: str, external_account_id: str | None = None
) -> str:
    """A Stripe Connect connected account as a payout method. The methods API has no such kind yet
    (onboarding members to Connect is not built), so the row is written as its service would."""
    method = PayoutMethod(
        id=uuid.uuid4(),
        member_id=uuid.UUID(member_id),
        kind="stripe_account",
        label=None,
        details_encrypted=rt.cipher.encrypt(
            orjson.dumps(
                {
                    "kind": "stripe_account",
                    "account_id": account_id,
                    "external_account_id": external_account_id,
                }
            ).decode(),
            context=_DETAILS_CONTEXT,
        ),
        key_id=rt.cipher.primary_kid,
        masked=f"{account_id[:5]}••••{account_id[-4:]}",
        fingerprint=secrets.token_bytes(32),
        usable_from=utcnow() - timedelta(seconds=1),
    )
    async with rt.db.sessionmaker() as session, session.begin():
        session.add(method)
    return str(method.id)


async def request_withdrawal(
    client: httpx.AsyncClient,
    member: Member,
    method_id: str,
    amount: int,
    currency: str = "INR",
    *,
    key: str | None = None,
) -> httpx.Response:
    return await client.post(
        "/v1/withdrawals",
        json={"amount": amount, "currency": currency, "payout_method_id": method_id},
        headers={**member.auth, "Idempotency-Key": key or str(uuid.uuid4())},
    )


async def run_submissions(rt: Runtime, withdrawal_id: str) -> int:
    """Run the worker's consumer on this withdrawal's `withdrawal_approved` events, as the worker
    would (inbox and all), without draining anybody else's events. Returns how many it handled."""
    consumer = registry.get(tasks.SUBMIT_CONSUMER)
    assert consumer is not None
    rows = await db_rows(
        rt,
        "SELECT id, payload FROM outbox_events WHERE topic = 'payouts.withdrawal_approved'"
        " AND payload->>'withdrawal_id' = :w ORDER BY id",
        w=withdrawal_id,
    )
    handled = 0
    for row in rows:
        handled += await handle_once(rt, consumer, row["id"], row["payload"])
    return handled


async def balance(rt: Runtime, member_id: str, currency: str = "INR") -> ledger.MemberBalance:
    async with rt.db.sessionmaker() as session:
        return await ledger.balance_of(session, uuid.UUID(member_id), currency)


async def assert_reconciles(rt: Runtime) -> None:
    async with rt.db.sessionmaker() as session:
        report = await ledger.reconcile(session)
    assert report.ok, [str(d) for d in report.discrepancies[:10]]


async def events_of(rt: Runtime, withdrawal_id: str) -> list[str]:
    rows = await db_rows(
        rt,
        "SELECT topic FROM outbox_events WHERE topic LIKE 'payouts.withdrawal_%'"
        " AND payload->>'withdrawal_id' = :w ORDER BY id",
        w=withdrawal_id,
    )
    return [r["topic"].removeprefix("payouts.withdrawal_") for r in rows]


async def audit_actions(rt: Runtime, withdrawal_id: str) -> list[str]:
    rows = await db_rows(
        rt,
        "SELECT action FROM audit_log WHERE target_type = 'withdrawal' AND target_id = :w ORDER BY created_at, id",
        w=withdrawal_id,
    )
    return [r["action"] for r in rows]


async def ledger_entries(rt: Runtime, withdrawal_id: str) -> list[str]:
    rows = await db_rows(
        rt,
        "SELECT type FROM ledger_entries WHERE reference_type = 'withdrawal' AND reference_id = :w ORDER BY id",
        w=withdrawal_id,
    )
    return [r["type"] for r in rows]
