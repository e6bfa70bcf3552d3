"""Payout provider webhooks: `POST /webhooks/razorpayx` and `POST /webhooks/stripe`.

No bearer token: the provider's signature over the raw body is the authentication (a bad one is
400). A 2xx tells the provider to stop retrying, so it is sent only once the event is stored and
handled; a failure while handling answers 5xx and the provider delivers the event again."""

from __future__ import annotations

from fastapi import APIRouter, Request

from referloop.config import PayoutProviderName
from referloop.core.deps import RuntimeDep
from referloop.core.errors import problem_responses
from referloop.payouts.withdrawals.schemas import WebhookAck
from referloop.payouts.withdrawals.service import webhooks

router = APIRouter(prefix="/webhooks", tags=["webhooks"], responses=problem_responses(400))


async def _receive(request: Request, rt: RuntimeDep, source: PayoutProviderName) -> WebhookAck:
    received = await webhooks.receive(rt, source.value, dict(request.headers), await request.body())
    return WebhookAck(duplicate=received.duplicate)


@router.post("/razorpayx", response_model=WebhookAck)
async def razorpayx_webhook(request: Request, rt: RuntimeDep) -> WebhookAck:
    """RazorpayX payout events (`payout.processed`, `payout.reversed`, ...), signed with
    `X-Razorpay-Signature` (hex HMAC-SHA256 of the body with the webhook secret)."""
    return await _receive(request, rt, PayoutProviderName.razorpayx)


@router.post("/stripe", response_model=WebhookAck)
async def stripe_webhook(request: Request, rt: RuntimeDep) -> WebhookAck:
    """Stripe events (`payout.paid`, `payout.failed`, `transfer.reversed`, ...) from the platform and
    Connect endpoints, signed with `Stripe-Signature` (t=..., v1=HMAC-SHA256 of "t.body"). From the
    Connect endpoint, `account.updated` activates a member's Stripe account payout method once Stripe
    can pay it."""
    return await _receive(request, rt, PayoutProviderName.stripe)
