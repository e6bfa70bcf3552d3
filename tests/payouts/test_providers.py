"""Payout providers against local servers that answer as RazorpayX and Stripe document: the request
each provider sends, idempotency (one payout per key, whatever fails in between), the errors we
raise for the providers' refusals, status normalization, and webhook signatures."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl

import pytest
from pydantic import ValidationError

from referloop.config import PayoutProviderName
from referloop.core.errors import InvalidInput
from referloop.payouts.providers import (
    BankAccountDestination,
    Beneficiary,
    IdempotencyKeyConflict,
    ManualProvider,
    PayoutProvider,
    PayoutRejected,
    PayoutRequest,
    PayoutStatus,
    PaypalDestination,
    ProviderAuthenticationFailed,
    ProviderPayoutNotFound,
    ProviderRateLimited,
    ProviderUnavailable,
    RazorpayXProvider,
    StripeAccountDestination,
    StripeConnectProvider,
    UnsupportedPayout,
    UpiDestination,
    WebhookVerificationError,
    build_payout_provider,
)
from referloop.payouts.providers import razorpayx as rzp
from referloop.payouts.providers import stripe as stp
from tests.fakes import FakeRazorpayX, FakeStripe, provider_env, provider_settings

BANK = BankAccountDestination(holder_name="Asha Rao", account_number="50100234567890", ifsc="HDFC0001234")


def new_key() -> str:
    return str(uuid.uuid4())


def new_ref() -> str:
    return "wd_" + uuid.uuid4().hex[:20]


def inr_request(**overrides: Any) -> PayoutRequest:
    values: dict[str, Any] = {
        "idempotency_key": new_key(),
        "reference": new_ref(),
        "amount": 125_00,
        "currency": "INR",
        "destination": BANK,
        "beneficiary": Beneficiary(
            name="Asha Rao", reference="m_" + uuid.uuid4().hex[:12], email="asha@example.com"
        ),
        "narration": "Referloop payout!",
    }
    values.update(overrides)
    return PayoutRequest(**values)


def changed(request: PayoutRequest, **update: Any) -> PayoutRequest:
    return request.model_copy(update=update)


@pytest.fixture
async def razorpayx(fake_razorpayx: FakeRazorpayX) -> AsyncIterator[RazorpayXProvider]:
    provider = RazorpayXProvider(provider_settings(fake_razorpayx))
    yield provider
    await provider.aclose()


@pytest.fixture
async def stripe(fake_stripe: FakeStripe) -> AsyncIterator[StripeConnectProvider]:
    provider = StripeConnectProvider(provider_settings(stripe=fake_stripe))
    yield provider
    await provider.aclose()


def stripe_request(account: str, **overrides: Any) -> PayoutRequest:
    values: dict[str, Any] = {
        "currency": "USD",
        "amount": 42_00,
        "destination": StripeAccountDestination(account_id=account),
    }
    values.update(overrides)
    return inr_request(**values)


def payout_posts(fake: FakeRazorpayX, key: str) -> list[Any]:
    return [
        r for r in fake.requests_to("POST", "/v1/payouts") if r.headers.get("x-payout-idempotency") == key
    ]


def stripe_posts(fake: FakeStripe, path: str, key: str) -> list[Any]:
    return [r for r in fake.requests_to("POST", path) if r.headers.get("idempotency-key") == key]


# --------------------------------------------------------------------------------------------------
class TestRazorpayXCreate:
    async def test_bank_payout_is_sent_with_our_key_account_and_credentials(
        self, razorpayx: RazorpayXProvider, fake_razorpayx: FakeRazorpayX
    ) -> None:
        request = inr_request()
        payout = await razorpayx.create_payout(request)

        assert payout.provider == "razorpayx"
        assert payout.provider_payout_id.startswith("pout_")
        assert (payout.status, payout.provider_status) == (PayoutStatus.processing, "processing")
        assert (payout.amount, payout.currency, payout.reference) == (125_00, "INR", request.reference)
        assert payout.fees == fake_razorpayx.fees + fake_razorpayx.tax

        [sent] = payout_posts(fake_razorpayx, request.idempotency_key)
        expected_auth = base64.b64encode(
            f"{fake_razorpayx.key_id}:{fake_razorpayx.key_secret}".encode()
        ).decode()
        assert sent.headers["authorization"] == f"Basic {expected_auth}"
        body = json.loads(sent.body)
        assert body["account_number"] == fake_razorpayx.account_number  # ours, not the member's
        assert (body["amount"], body["currency"], body["mode"], body["purpose"]) == (
            125_00,
            "INR",
            "IMPS",
            "payout",
        )
        assert body["reference_id"] == request.reference
        assert body["narration"] == "Referloop payout"  # only [A-Za-z0-9 ] is allowed
        fund_account = fake_razorpayx.fund_accounts[body["fund_account_id"]]
        assert fund_account["bank_account"]["account_number"] == BANK.account_number
        assert fund_account["bank_account"]["ifsc"] == BANK.ifsc
        contact = fake_razorpayx.contacts[fund_account["contact_id"]]
        assert contact["reference_id"] == request.beneficiary.reference
        assert fake_razorpayx.created_by_key[request.idempotency_key] == [payout.provider_payout_id]

    async def test_upi_payout_uses_upi_mode_and_a_vpa_fund_account(
        self, razorpayx: RazorpayXProvider, fake_razorpayx: FakeRazorpayX
    ) -> None:
        request = inr_request(destination=UpiDestination(upi_id="asha.rao@okhdfc"))
        payout = await razorpayx.create_payout(request)

        [sent] = payout_posts(fake_razorpayx, request.idempotency_key)
        body = json.loads(sent.body)
        assert body["mode"] == "UPI"
        assert fake_razorpayx.fund_accounts[body["fund_account_id"]]["vpa"]["address"] == "asha.rao@okhdfc"
        assert payout.status is PayoutStatus.processing

    async def test_asking_again_returns_the_same_payout_as_it_is_now(
        self, razorpayx: RazorpayXProvider, fake_razorpayx: FakeRazorpayX
    ) -> None:
        request = inr_request()
        first = await razorpayx.create_payout(request)
        fake_razorpayx.set_status(first.provider_payout_id, "processed", utr="HDFCN52024112500001")

        again = await razorpayx.create_payout(request)

        assert again.provider_payout_id == first.provider_payout_id
        assert (again.status, again.bank_reference) == (PayoutStatus.paid, "HDFCN52024112500001")
        assert len(fake_razorpayx.created_by_key[request.idempotency_key]) == 1
        # The contact and fund account were found again, not made again.
        assert (
            len([f for f in fake_razorpayx.fund_accounts.values() if f["id"] == first.raw["fund_account_id"]])
            == 1
        )

    async def test_answer_lost_to_a_5xx_is_asked_again_with_the_same_key_and_pays_once(
        self, razorpayx: RazorpayXProvider, fake_razorpayx: FakeRazorpayX
    ) -> None:
        request = inr_request()
        fake_razorpayx.fail_next(500, after=True, path="/v1/payouts")

        payout = await razorpayx.create_payout(request)

        attempts = payout_posts(fake_razorpayx, request.idempotency_key)
        assert [a.status for a in attempts] == [500, 200]
        assert attempts[0].body == attempts[1].body  # same key, same bytes
        assert fake_razorpayx.created_by_key[request.idempotency_key] == [payout.provider_payout_id]
        assert len(fake_razorpayx.payouts_for_reference(request.reference)) == 1

    async def test_5xx_before_any_work_is_retried(
        self, razorpayx: RazorpayXProvider, fake_razorpayx: FakeRazorpayX
    ) -> None:
        request = inr_request()
        fake_razorpayx.fail_next(503, count=2, path="/v1/payouts")

        payout = await razorpayx.create_payout(request)

        assert [a.status for a in payout_posts(fake_razorpayx, request.idempotency_key)] == [503, 503, 200]
        assert fake_razorpayx.created_by_key[request.idempotency_key] == [payout.provider_payout_id]

    async def test_5xx_every_time_is_retryable_with_an_unknown_outcome(
        self, razorpayx: RazorpayXProvider, fake_razorpayx: FakeRazorpayX
    ) -> None:
        request = inr_request()
        fake_razorpayx.fail_next(500, count=10, path="/v1/payouts")

        with pytest.raises(ProviderUnavailable) as caught:
            await razorpayx.create_payout(request)

        err = caught.value
        assert err.retryable and err.outcome_unknown and not err.no_payout_made
        assert err.provider_code == "SERVER_ERROR"
        assert "trouble completing your request" in err.detail
        assert len(payout_posts(fake_razorpayx, request.idempotency_key)) == 3  # payout_provider_max_attempts
        assert request.idempotency_key not in fake_razorpayx.created_by_key

    async def test_a_timed_out_request_that_still_paid_is_found_by_the_retry(
        self, fake_razorpayx: FakeRazorpayX
    ) -> None:
        # We give up waiting after 0.2 s; Razorpay finishes the payout anyway at 0.5 s. The retries
        # meet "key in use" while it runs, then get the payout it made: one payout, never two.
        settings = provider_settings(
            fake_razorpayx,
            payout_provider_timeout_seconds=0.2,
            payout_provider_max_attempts=10,
            payout_provider_retry_base_seconds=0.1,
        )
        provider = RazorpayXProvider(settings)
        request = inr_request()
        fake_razorpayx.hold_next(0.5, path="/v1/payouts")
        try:
            payout = await provider.create_payout(request)
        finally:
            await provider.aclose()

        assert fake_razorpayx.created_by_key[request.idempotency_key] == [payout.provider_payout_id]
        statuses = [a.status for a in payout_posts(fake_razorpayx, request.idempotency_key)]
        assert statuses[-1] == 200 and len(statuses) >= 2

    async def test_an_unreachable_provider_is_retryable_and_certainly_did_nothing(self) -> None:
        import socket

        with socket.socket() as sock:  # a port nobody listens on
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        settings = provider_settings(razorpayx_base_url=f"http://127.0.0.1:{port}")
        provider = RazorpayXProvider(settings)
        try:
            with pytest.raises(ProviderUnavailable) as caught:
                await provider.create_payout(inr_request())
        finally:
            await provider.aclose()
        assert caught.value.retryable and not caught.value.outcome_unknown

    async def test_same_key_with_another_body_is_refused_and_pays_nothing_more(
        self, razorpayx: RazorpayXProvider, fake_razorpayx: FakeRazorpayX
    ) -> None:
        request = inr_request()
        first = await razorpayx.create_payout(request)

        with pytest.raises(IdempotencyKeyConflict) as caught:
            await razorpayx.create_payout(changed(request, amount=999_00))

        err = caught.value
        assert err.detail == "Different request body sent for the same Idempotency Header"
        assert (err.http_status, err.provider_code) == (400, "BAD_REQUEST_ERROR")
        assert not err.retryable and not err.no_payout_made  # a payout exists under that key
        assert len(payout_posts(fake_razorpayx, request.idempotency_key)) == 2  # refused, not retried
        assert [p["amount"] for p in fake_razorpayx.payouts_for_reference(request.reference)] == [
            first.amount
        ]

    async def test_duplicate_sent_while_the_first_is_in_flight_gets_the_same_payout(
        self, fake_razorpayx: FakeRazorpayX
    ) -> None:
        settings = provider_settings(
            fake_razorpayx, payout_provider_max_attempts=8, payout_provider_retry_base_seconds=0.05
        )
        provider = RazorpayXProvider(settings)
        request = inr_request()
        fake_razorpayx.hold_next(0.3, path="/v1/payouts")
        try:
            one, two = await asyncio.gather(provider.create_payout(request), provider.create_payout(request))
        finally:
            await provider.aclose()

        assert one.provider_payout_id == two.provider_payout_id
        assert len(fake_razorpayx.created_by_key[request.idempotency_key]) == 1
        # The duplicate met Razorpay's "key in use" 500 at least once, and was retried.
        assert 500 in [a.status for a in payout_posts(fake_razorpayx, request.idempotency_key)]

    async def test_amount_below_the_minimum_is_rejected_with_razorpays_message(
        self, razorpayx: RazorpayXProvider, fake_razorpayx: FakeRazorpayX
    ) -> None:
        request = inr_request(amount=50)

        with pytest.raises(PayoutRejected) as caught:
            await razorpayx.create_payout(request)

        err = caught.value
        assert err.detail == "Minimum transaction amount should be 100 paise"
        assert (err.http_status, err.provider_code, err.extra["field"]) == (
            400,
            "BAD_REQUEST_ERROR",
            "amount",
        )
        assert err.no_payout_made and not err.retryable
        assert len(payout_posts(fake_razorpayx, request.idempotency_key)) == 1  # permanent: not retried
        assert fake_razorpayx.payouts_for_reference(request.reference) == []

    async def test_low_balance_fails_the_payout_unless_it_may_queue(
        self, fake_razorpayx: FakeRazorpayX
    ) -> None:
        fake_razorpayx.balance = 0
        strict = RazorpayXProvider(provider_settings(fake_razorpayx, razorpayx_queue_if_low_balance=False))
        queueing = RazorpayXProvider(provider_settings(fake_razorpayx))
        refused, queued = inr_request(), inr_request()
        try:
            with pytest.raises(PayoutRejected) as caught:
                await strict.create_payout(refused)
            payout = await queueing.create_payout(queued)
        finally:
            await strict.aclose()
            await queueing.aclose()

        assert (
            caught.value.detail
            == "Your account does not have enough balance to carry out the payout operation."
        )
        assert fake_razorpayx.payouts_for_reference(refused.reference) == []
        assert (payout.status, payout.provider_status) == (PayoutStatus.pending, "queued")
        assert payout.raw["status_details"]["reason"] == "low_balance"

    async def test_wrong_secret_is_an_authentication_failure(self, fake_razorpayx: FakeRazorpayX) -> None:
        provider = RazorpayXProvider(provider_settings(fake_razorpayx, razorpayx_key_secret="not-the-secret"))
        request = inr_request()
        try:
            with pytest.raises(ProviderAuthenticationFailed) as caught:
                await provider.create_payout(request)
        finally:
            await provider.aclose()

        assert caught.value.detail == "The api secret provided is invalid"
        assert caught.value.http_status == 401
        assert fake_razorpayx.payouts_for_reference(request.reference) == []

    async def test_a_short_rate_limit_is_waited_out(
        self, razorpayx: RazorpayXProvider, fake_razorpayx: FakeRazorpayX
    ) -> None:
        request = inr_request()
        fake_razorpayx.rate_limit_next(retry_after=0.05, path="/v1/payouts")

        payout = await razorpayx.create_payout(request)

        assert [a.status for a in payout_posts(fake_razorpayx, request.idempotency_key)] == [429, 200]
        assert payout.status is PayoutStatus.processing

    async def test_a_long_retry_after_is_left_to_the_worker(
        self, razorpayx: RazorpayXProvider, fake_razorpayx: FakeRazorpayX
    ) -> None:
        request = inr_request()
        fake_razorpayx.rate_limit_next(retry_after=30, path="/v1/payouts")

        with pytest.raises(ProviderRateLimited) as caught:
            await razorpayx.create_payout(request)

        err = caught.value
        assert err.retryable and err.retry_after == 30 and not err.outcome_unknown
        assert err.headers == {"Retry-After": "30"}
        assert len(payout_posts(fake_razorpayx, request.idempotency_key)) == 1

    @pytest.mark.parametrize(
        ("overrides", "message"),
        [
            ({"currency": "USD"}, "RazorpayX pays INR only, not USD."),
            ({"destination": PaypalDestination(email="asha@example.com")}, "not paypal"),
        ],
    )
    async def test_what_it_cannot_pay_is_refused_before_any_request(
        self,
        razorpayx: RazorpayXProvider,
        fake_razorpayx: FakeRazorpayX,
        overrides: dict[str, Any],
        message: str,
    ) -> None:
        before = len(fake_razorpayx.requests)

        with pytest.raises(UnsupportedPayout, match=message) as caught:
            await razorpayx.create_payout(inr_request(**overrides))

        assert caught.value.no_payout_made
        assert len(fake_razorpayx.requests) == before


class TestRazorpayXStatus:
    @pytest.mark.parametrize(
        ("state", "expected"),
        [
            ("pending", PayoutStatus.pending),
            ("queued", PayoutStatus.pending),
            ("scheduled", PayoutStatus.pending),
            ("processing", PayoutStatus.processing),
            ("processed", PayoutStatus.paid),
            ("failed", PayoutStatus.failed),
            ("rejected", PayoutStatus.failed),
            ("cancelled", PayoutStatus.cancelled),
            ("reversed", PayoutStatus.reversed),
            ("some_new_state", PayoutStatus.processing),  # unknown: still in flight, never final
        ],
    )
    def test_every_documented_state_is_normalized(self, state: str, expected: PayoutStatus) -> None:
        assert rzp.normalize_status(state) is expected

    async def test_a_payout_read_back_through_its_life(
        self, razorpayx: RazorpayXProvider, fake_razorpayx: FakeRazorpayX
    ) -> None:
        created = await razorpayx.create_payout(inr_request())
        pid = created.provider_payout_id

        assert (await razorpayx.get_payout(pid)).status is PayoutStatus.processing
        fake_razorpayx.set_status(pid, "processed", utr="UTR0000000001")
        paid = await razorpayx.get_payout(pid)
        assert (paid.status, paid.bank_reference, paid.failure_code) == (
            PayoutStatus.paid,
            "UTR0000000001",
            None,
        )
        fake_razorpayx.set_status(
            pid, "reversed", reason="beneficiary_bank_rejected", description="Bank returned it"
        )
        back = await razorpayx.get_payout(pid)
        assert (back.status, back.failure_code, back.failure_message) == (
            PayoutStatus.reversed,
            "beneficiary_bank_rejected",
            "Bank returned it",
        )

    async def test_approval_workflow_and_queue_states(
        self, razorpayx: RazorpayXProvider, fake_razorpayx: FakeRazorpayX
    ) -> None:
        fake_razorpayx.approval_workflow = True
        awaiting = await razorpayx.create_payout(inr_request())
        fake_razorpayx.approval_workflow = False
        fake_razorpayx.balance = 0
        queued = await razorpayx.create_payout(inr_request())

        assert (awaiting.status, awaiting.provider_status) == (PayoutStatus.pending, "pending")
        fake_razorpayx.set_status(awaiting.provider_payout_id, "rejected", reason="rejected_by_approver")
        rejected = await razorpayx.get_payout(awaiting.provider_payout_id)
        assert (rejected.status, rejected.provider_status) == (PayoutStatus.failed, "rejected")
        fake_razorpayx.set_status(queued.provider_payout_id, "cancelled", reason="cancelled_by_user")
        assert (await razorpayx.get_payout(queued.provider_payout_id)).status is PayoutStatus.cancelled

    async def test_unknown_payout_is_not_found(self, razorpayx: RazorpayXProvider) -> None:
        with pytest.raises(ProviderPayoutNotFound) as caught:
            await razorpayx.get_payout("pout_DoesNotExist01")
        assert caught.value.detail == "The id provided does not exist"
        assert caught.value.http_status == 400  # Razorpay says 400, not 404

    async def test_payouts_are_found_by_our_reference_after_the_key_expired(
        self, razorpayx: RazorpayXProvider, fake_razorpayx: FakeRazorpayX
    ) -> None:
        request = inr_request()
        first = await razorpayx.create_payout(request)
        fake_razorpayx.expire_idempotency_keys()

        # Why find_payouts exists: once the key has expired, asking again pays a second time.
        second = await razorpayx.create_payout(request)
        assert second.provider_payout_id != first.provider_payout_id
        found = await razorpayx.find_payouts(request.reference)

        assert {p.provider_payout_id for p in found} == {first.provider_payout_id, second.provider_payout_id}
        assert all(p.reference == request.reference for p in found)
        assert await razorpayx.find_payouts(new_ref()) == []

    def test_the_fake_refuses_undocumented_transitions(self, fake_razorpayx: FakeRazorpayX) -> None:
        payout_id = "pout_" + uuid.uuid4().hex[:14]
        fake_razorpayx.payouts[payout_id] = {
            "id": payout_id,
            "status": "cancelled",
            "reference_id": None,
            "created_at": 0,
        }
        with pytest.raises(ValueError, match="never moves a payout from cancelled to processed"):
            fake_razorpayx.set_status(payout_id, "processed")


class TestRazorpayXWebhooks:
    async def test_signed_event_is_accepted_and_parsed(
        self, razorpayx: RazorpayXProvider, fake_razorpayx: FakeRazorpayX
    ) -> None:
        request = inr_request()
        created = await razorpayx.create_payout(request)
        fake_razorpayx.set_status(created.provider_payout_id, "processed")
        headers, body = fake_razorpayx.webhook(created.provider_payout_id, event_id="EvtPayout000001")

        event = razorpayx.verify_webhook(headers, body)

        assert (event.provider, event.event_id, event.event_type) == (
            "razorpayx",
            "EvtPayout000001",
            "payout.processed",
        )
        assert event.payout is not None
        assert (event.payout.provider_payout_id, event.payout.status) == (
            created.provider_payout_id,
            PayoutStatus.paid,
        )
        assert event.payout.reference == request.reference

    async def test_header_names_are_case_insensitive(
        self, razorpayx: RazorpayXProvider, fake_razorpayx: FakeRazorpayX
    ) -> None:
        created = await razorpayx.create_payout(inr_request())
        headers, body = fake_razorpayx.webhook(created.provider_payout_id)
        event = razorpayx.verify_webhook({k.lower(): v for k, v in headers.items()}, body)
        assert event.event_id == headers["X-Razorpay-Event-Id"]

    async def test_tampered_body_wrong_secret_and_no_signature_are_refused(
        self, razorpayx: RazorpayXProvider, fake_razorpayx: FakeRazorpayX
    ) -> None:
        created = await razorpayx.create_payout(inr_request())
        fake_razorpayx.set_status(created.provider_payout_id, "failed")
        headers, body = fake_razorpayx.webhook(created.provider_payout_id)
        tampered = body.replace(b'"failed"', b'"processed"')
        assert tampered != body
        wrong_headers, wrong_body = fake_razorpayx.webhook(
            created.provider_payout_id, secret="someone-elses-secret"
        )
        unsigned = {k: v for k, v in headers.items() if k != "X-Razorpay-Signature"}

        for bad_headers, bad_body, message in [
            (headers, tampered, "does not match"),
            (wrong_headers, wrong_body, "does not match"),
            (unsigned, body, "missing"),
            ({**unsigned, "X-Razorpay-Signature": "é" * 64}, body, "does not match"),  # a 500 before
        ]:
            with pytest.raises(WebhookVerificationError, match=message):
                razorpayx.verify_webhook(bad_headers, bad_body)

    async def test_events_signed_with_the_previous_secret_are_accepted_after_rotation(
        self, fake_razorpayx: FakeRazorpayX
    ) -> None:
        rotated = RazorpayXProvider(
            provider_settings(
                fake_razorpayx,
                razorpayx_webhook_secret="the-new-secret",
                razorpayx_webhook_previous_secret=fake_razorpayx.webhook_secret,
            )
        )
        try:
            created = await rotated.create_payout(inr_request())
            old_headers, old_body = fake_razorpayx.webhook(created.provider_payout_id)
            new_headers, new_body = fake_razorpayx.webhook(
                created.provider_payout_id, secret="the-new-secret"
            )
            assert rotated.verify_webhook(old_headers, old_body).payout is not None
            assert rotated.verify_webhook(new_headers, new_body).payout is not None
        finally:
            await rotated.aclose()

    async def test_the_fake_signs_as_razorpays_own_sdk_verifies(
        self, razorpayx: RazorpayXProvider, fake_razorpayx: FakeRazorpayX
    ) -> None:
        razorpay = pytest.importorskip("razorpay")
        created = await razorpayx.create_payout(inr_request())
        headers, body = fake_razorpayx.webhook(created.provider_payout_id)
        utility = razorpay.Utility(None)
        assert utility.verify_webhook_signature(
            body.decode(), headers["X-Razorpay-Signature"], fake_razorpayx.webhook_secret
        )
        with pytest.raises(razorpay.errors.SignatureVerificationError):
            utility.verify_webhook_signature(
                body.decode() + " ", headers["X-Razorpay-Signature"], fake_razorpayx.webhook_secret
            )

    async def test_the_fake_delivers_signed_webhooks_over_http(
        self, razorpayx: RazorpayXProvider, fake_razorpayx: FakeRazorpayX
    ) -> None:
        received = await _webhook_receiver(razorpayx)
        created = await razorpayx.create_payout(inr_request())
        fake_razorpayx.set_status(created.provider_payout_id, "processed")
        headers, body = fake_razorpayx.webhook(created.provider_payout_id)

        good = await fake_razorpayx.deliver(received.url, headers, body)
        bad = await fake_razorpayx.deliver(received.url, headers, body + b" ")
        received.stop()

        assert (good.status_code, bad.status_code) == (200, 400)
        assert [e.payout.status for e in received.events if e.payout] == [PayoutStatus.paid]

    async def test_the_official_sdk_reads_the_fakes_errors(self, fake_razorpayx: FakeRazorpayX) -> None:
        razorpay = pytest.importorskip("razorpay")
        client = razorpay.Client(
            auth=(fake_razorpayx.key_id, fake_razorpayx.key_secret), base_url=fake_razorpayx.url
        )
        with pytest.raises(razorpay.errors.BadRequestError, match="Idempotency key is missing"):
            await asyncio.to_thread(client.post, "/v1/payouts", {"amount": 100})


class _Receiver:
    def __init__(self, provider: PayoutProvider) -> None:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        from tests.fakes.server import LoopbackServer

        self.events: list[Any] = []

        async def hook(request: Request) -> PlainTextResponse:
            try:
                self.events.append(provider.verify_webhook(dict(request.headers), await request.body()))
            except WebhookVerificationError as exc:
                return PlainTextResponse(exc.detail, status_code=400)
            return PlainTextResponse("ok")

        self._server = LoopbackServer(Starlette(routes=[Route("/hook", hook, methods=["POST"])]))
        self.url = self._server.start() + "/hook"

    def stop(self) -> None:
        self._server.stop()


async def _webhook_receiver(provider: PayoutProvider) -> _Receiver:
    return await asyncio.to_thread(_Receiver, provider)


# --------------------------------------------------------------------------------------------------
class TestStripeCreate:
    async def test_transfer_then_payout_on_the_connected_account(
        self, stripe: StripeConnectProvider, fake_stripe: FakeStripe
    ) -> None:
        account = fake_stripe.add_account()
        platform_before = fake_stripe.balance_of(None, "usd")
        request = stripe_request(account, narration="Referloop: payout #7")

        payout = await stripe.create_payout(request)

        assert payout.provider_payout_id.startswith(f"{account}/po_")
        assert (payout.status, payout.provider_status) == (PayoutStatus.pending, "pending")
        assert (payout.amount, payout.currency, payout.reference) == (42_00, "USD", request.reference)
        [transfer_call] = stripe_posts(fake_stripe, "/v1/transfers", f"{request.idempotency_key}-transfer")
        [payout_call] = stripe_posts(fake_stripe, "/v1/payouts", f"{request.idempotency_key}-payout")
        assert transfer_call.headers["authorization"] == f"Bearer {fake_stripe.api_key}"
        assert transfer_call.headers["content-type"] == "application/x-www-form-urlencoded"
        sent = dict(parse_qsl(transfer_call.body.decode()))
        assert sent["amount"] == "4200" and sent["currency"] == "usd" and sent["destination"] == account
        assert sent["metadata[referloop_reference]"] == request.reference
        assert "stripe-account" not in transfer_call.headers  # the transfer is the platform's
        assert payout_call.headers["stripe-account"] == account
        assert dict(parse_qsl(payout_call.body.decode()))["statement_descriptor"] == "Referloop payout 7"
        # Money moved: off our platform balance, through the account, out to its bank.
        assert fake_stripe.balance_of(None, "usd") == platform_before - 42_00
        assert fake_stripe.balance_of(account, "usd") == 0

    async def test_isk_is_sent_in_stripes_units_and_what_stripe_cannot_pay_is_refused_first(
        self, stripe: StripeConnectProvider, fake_stripe: FakeStripe
    ) -> None:
        # ISK has no minor unit in ISO 4217, but Stripe counts it in hundredths: 5,000 kr is 500000.
        account = fake_stripe.add_account()
        request = stripe_request(account, currency="ISK", amount=5_000)
        payout = await stripe.create_payout(request)
        [transfer_call] = stripe_posts(fake_stripe, "/v1/transfers", f"{request.idempotency_key}-transfer")
        [payout_call] = stripe_posts(fake_stripe, "/v1/payouts", f"{request.idempotency_key}-payout")
        assert dict(parse_qsl(transfer_call.body.decode()))["amount"] == "500000"
        assert dict(parse_qsl(payout_call.body.decode()))["amount"] == "500000"
        assert (payout.amount, payout.currency) == (5_000, "ISK")  # back in our units

        # MGA has two decimals in ISO 4217 and none at Stripe: 7,000.00 Ar is 7000.
        mga = stripe_request(account, currency="MGA", amount=700_000)
        assert (await stripe.create_payout(mga)).amount == 700_000
        [mga_call] = stripe_posts(fake_stripe, "/v1/transfers", f"{mga.idempotency_key}-transfer")
        assert dict(parse_qsl(mga_call.body.decode()))["amount"] == "7000"

        # Payouts in HUF are whole forints, MGA has no fractions at Stripe, three-decimal currencies
        # end in 0. Refused before any call.
        for currency, amount in (("HUF", 12_345), ("MGA", 700_050), ("KWD", 1_001)):
            bad = stripe_request(account, currency=currency, amount=amount)
            with pytest.raises(PayoutRejected) as refused:
                await stripe.create_payout(bad)
            assert refused.value.no_payout_made
            assert not stripe_posts(fake_stripe, "/v1/transfers", f"{bad.idempotency_key}-transfer")

    async def test_transfer_only_mode_returns_the_transfer_as_paid(self, fake_stripe: FakeStripe) -> None:
        provider = StripeConnectProvider(provider_settings(stripe=fake_stripe, stripe_connect_payouts=False))
        account = fake_stripe.add_account()
        try:
            payout = await provider.create_payout(stripe_request(account))
        finally:
            await provider.aclose()
        assert payout.provider_payout_id.startswith("tr_")
        assert payout.status is PayoutStatus.paid
        assert fake_stripe.balance_of(account, "usd") == 42_00
        assert not [
            p
            for p in fake_stripe.payouts.values()
            if p["metadata"].get("referloop_reference") == payout.reference
        ]

    async def test_asking_again_replays_the_same_transfer_and_payout(
        self, stripe: StripeConnectProvider, fake_stripe: FakeStripe
    ) -> None:
        account = fake_stripe.add_account()
        request = stripe_request(account)
        first = await stripe.create_payout(request)
        again = await stripe.create_payout(request)

        assert again.provider_payout_id == first.provider_payout_id
        assert _transfers_for(fake_stripe, request.reference) == 1
        assert _payouts_for(fake_stripe, request.reference) == 1

    async def test_answer_lost_to_a_5xx_is_asked_again_with_the_same_key_and_pays_once(
        self, stripe: StripeConnectProvider, fake_stripe: FakeStripe
    ) -> None:
        account = fake_stripe.add_account()
        request = stripe_request(account)
        fake_stripe.fail_next(502, after=True, path="/v1/payouts")

        payout = await stripe.create_payout(request)

        attempts = stripe_posts(fake_stripe, "/v1/payouts", f"{request.idempotency_key}-payout")
        assert [a.status for a in attempts] == [502, 200]
        assert attempts[0].body == attempts[1].body
        assert _payouts_for(fake_stripe, request.reference) == 1
        assert payout.provider_payout_id.split("/")[1] in fake_stripe.payouts

    async def test_a_500_stored_under_the_key_stays_an_unknown_outcome(
        self, stripe: StripeConnectProvider, fake_stripe: FakeStripe
    ) -> None:
        account = fake_stripe.add_account()
        request = stripe_request(account)
        fake_stripe.store_error_next(path="/v1/payouts")

        with pytest.raises(ProviderUnavailable) as caught:
            await stripe.create_payout(request)

        err = caught.value
        assert err.retryable and err.outcome_unknown and not err.no_payout_made
        assert err.provider_code == "api_error"
        # Every retry got the stored 500 replayed; nothing was paid twice (or at all).
        attempts = stripe_posts(fake_stripe, "/v1/payouts", f"{request.idempotency_key}-payout")
        assert [a.status for a in attempts] == [500, 500, 500]
        assert _payouts_for(fake_stripe, request.reference) == 0
        assert _transfers_for(fake_stripe, request.reference) == 1  # not reversed: the outcome is unknown

    async def test_same_key_with_another_amount_is_an_idempotency_error(
        self, stripe: StripeConnectProvider, fake_stripe: FakeStripe
    ) -> None:
        account = fake_stripe.add_account()
        request = stripe_request(account)
        await stripe.create_payout(request)

        with pytest.raises(IdempotencyKeyConflict) as caught:
            await stripe.create_payout(changed(request, amount=43_00))

        err = caught.value
        assert err.detail.startswith("Keys for idempotent requests can only be used with the same parameters")
        assert (err.http_status, err.provider_code) == (400, "idempotency_error")
        assert _transfers_for(fake_stripe, request.reference) == 1

    async def test_duplicate_sent_while_the_first_is_in_flight_gets_the_same_payout(
        self, fake_stripe: FakeStripe
    ) -> None:
        settings = provider_settings(
            stripe=fake_stripe, payout_provider_max_attempts=8, payout_provider_retry_base_seconds=0.05
        )
        provider = StripeConnectProvider(settings)
        account = fake_stripe.add_account()
        request = stripe_request(account)
        fake_stripe.hold_next(0.3, path="/v1/transfers")
        try:
            one, two = await asyncio.gather(provider.create_payout(request), provider.create_payout(request))
        finally:
            await provider.aclose()

        assert one.provider_payout_id == two.provider_payout_id
        assert _transfers_for(fake_stripe, request.reference) == 1
        assert _payouts_for(fake_stripe, request.reference) == 1
        statuses = [
            a.status
            for a in stripe_posts(fake_stripe, "/v1/transfers", f"{request.idempotency_key}-transfer")
        ]
        assert 409 in statuses  # idempotency_key_in_use, retried

    async def test_platform_balance_too_low_is_rejected_and_nothing_moves(
        self, stripe: StripeConnectProvider, fake_stripe: FakeStripe
    ) -> None:
        account = fake_stripe.add_account()
        fake_stripe.platform_balance["usd"] = 10_00
        request = stripe_request(account)

        with pytest.raises(PayoutRejected) as caught:
            await stripe.create_payout(request)

        err = caught.value
        assert err.provider_code == "balance_insufficient" and err.http_status == 400
        assert err.detail.startswith("You have insufficient available funds in your Stripe account.")
        assert err.no_payout_made
        assert _transfers_for(fake_stripe, request.reference) == 0
        assert fake_stripe.balance_of(None, "usd") == 10_00

    async def test_a_refused_payout_reverses_its_transfer(
        self, stripe: StripeConnectProvider, fake_stripe: FakeStripe
    ) -> None:
        account = fake_stripe.add_account()
        platform_before = fake_stripe.balance_of(None, "usd")
        request = stripe_request(
            account,
            destination=StripeAccountDestination(account_id=account, external_account_id="ba_notthisone"),
        )

        with pytest.raises(PayoutRejected) as caught:
            await stripe.create_payout(request)

        assert caught.value.detail == "No such external account: 'ba_notthisone'"
        assert caught.value.no_payout_made
        [transfer] = [
            t
            for t in fake_stripe.transfers.values()
            if t["metadata"]["referloop_reference"] == request.reference
        ]
        assert transfer["reversed"] and transfer["amount_reversed"] == 42_00
        assert fake_stripe.balance_of(None, "usd") == platform_before
        assert fake_stripe.balance_of(account, "usd") == 0

    async def test_wrong_api_key_is_an_authentication_failure(self, fake_stripe: FakeStripe) -> None:
        provider = StripeConnectProvider(
            provider_settings(stripe=fake_stripe, stripe_api_key="sk_test_wrongkey00000000000")
        )
        account = fake_stripe.add_account()
        request = stripe_request(account)
        try:
            with pytest.raises(ProviderAuthenticationFailed) as caught:
                await provider.create_payout(request)
        finally:
            await provider.aclose()
        assert caught.value.detail.startswith("Invalid API Key provided: sk_test_")
        assert caught.value.http_status == 401
        assert _transfers_for(fake_stripe, request.reference) == 0

    @pytest.mark.parametrize("legacy", [False, True])
    async def test_rate_limits_are_retried(
        self, stripe: StripeConnectProvider, fake_stripe: FakeStripe, legacy: bool
    ) -> None:
        account = fake_stripe.add_account()
        request = stripe_request(account)
        fake_stripe.rate_limit_next(method="POST", path="/v1/transfers", legacy=legacy)

        payout = await stripe.create_payout(request)

        statuses = [
            a.status
            for a in stripe_posts(fake_stripe, "/v1/transfers", f"{request.idempotency_key}-transfer")
        ]
        assert statuses == [400 if legacy else 429, 200]
        assert payout.status is PayoutStatus.pending

    async def test_a_try_after_stripe_pruned_the_keys_reuses_the_attempts_transfer(
        self, stripe: StripeConnectProvider, fake_stripe: FakeStripe
    ) -> None:
        """The transfer went through, the payout step never did; a day later the keys are gone and
        the attempt is sent again (the outbox's late retry, or `payouts sync`): one transfer only."""
        account = fake_stripe.add_account()
        request = stripe_request(account, metadata={"referloop_attempt": "1"})
        fake_stripe.fail_next(503, count=3, path="/v1/payouts")
        with pytest.raises(ProviderUnavailable):
            await stripe.create_payout(request)
        assert _transfers_for(fake_stripe, request.reference) == 1
        fake_stripe.expire_idempotency_keys()

        payout = await stripe.create_payout(request)

        [transfer] = [t for t in fake_stripe.transfers.values() if t["transfer_group"] == request.reference]
        assert payout.raw["metadata"]["referloop_transfer"] == transfer["id"]
        assert fake_stripe.balance_of(account, "usd") == 0  # the one transfer, paid out
        # Another attempt (a staff retry) is a transfer of its own.
        await stripe.create_payout(
            changed(request, idempotency_key=new_key(), metadata={"referloop_attempt": "2"})
        )
        assert _transfers_for(fake_stripe, request.reference) == 2

    async def test_only_connected_accounts_are_paid(
        self, stripe: StripeConnectProvider, fake_stripe: FakeStripe
    ) -> None:
        before = len(fake_stripe.requests)
        with pytest.raises(UnsupportedPayout, match="not bank_account"):
            await stripe.create_payout(inr_request())
        assert len(fake_stripe.requests) == before


def _transfers_for(fake: FakeStripe, reference: str) -> int:
    return len([t for t in fake.transfers.values() if t["metadata"].get("referloop_reference") == reference])


def _payouts_for(fake: FakeStripe, reference: str) -> int:
    return len([p for p in fake.payouts.values() if p["metadata"].get("referloop_reference") == reference])


class TestStripeStatus:
    @pytest.mark.parametrize(
        ("state", "expected"),
        [
            ("pending", PayoutStatus.pending),
            ("in_transit", PayoutStatus.processing),
            ("paid", PayoutStatus.paid),
            ("failed", PayoutStatus.failed),
            ("canceled", PayoutStatus.cancelled),
            ("some_new_state", PayoutStatus.processing),
        ],
    )
    def test_every_documented_state_is_normalized(self, state: str, expected: PayoutStatus) -> None:
        assert stp.normalize_status(state) is expected

    async def test_a_payout_read_back_through_its_life(
        self, stripe: StripeConnectProvider, fake_stripe: FakeStripe
    ) -> None:
        account = fake_stripe.add_account()
        created = await stripe.create_payout(stripe_request(account))
        pid = created.provider_payout_id
        po = pid.split("/")[1]

        fake_stripe.set_payout_status(po, "in_transit")
        assert (await stripe.get_payout(pid)).status is PayoutStatus.processing
        fake_stripe.set_payout_status(po, "paid")
        assert (await stripe.get_payout(pid)).status is PayoutStatus.paid
        fake_stripe.set_payout_status(po, "failed", failure_code="account_closed")  # even after paid
        failed = await stripe.get_payout(pid)
        assert (failed.status, failed.failure_code, failed.failure_message) == (
            PayoutStatus.failed,
            "account_closed",
            "The bank account has been closed.",
        )
        assert fake_stripe.balance_of(account, "usd") == 42_00  # back on the connected account

    async def test_cancelled_and_reversed(
        self, fake_stripe: FakeStripe, stripe: StripeConnectProvider
    ) -> None:
        account = fake_stripe.add_account()
        created = await stripe.create_payout(stripe_request(account))
        fake_stripe.set_payout_status(created.provider_payout_id.split("/")[1], "canceled")
        assert (await stripe.get_payout(created.provider_payout_id)).status is PayoutStatus.cancelled

        transfers_only = StripeConnectProvider(
            provider_settings(stripe=fake_stripe, stripe_connect_payouts=False)
        )
        try:
            transfer = await transfers_only.create_payout(stripe_request(account))
            fake_stripe.reverse_transfer(transfer.provider_payout_id)
            assert (
                await transfers_only.get_payout(transfer.provider_payout_id)
            ).status is PayoutStatus.reversed
        finally:
            await transfers_only.aclose()

    async def test_unknown_payout_or_wrong_account_is_not_found(
        self, stripe: StripeConnectProvider, fake_stripe: FakeStripe
    ) -> None:
        account, other = fake_stripe.add_account(), fake_stripe.add_account()
        created = await stripe.create_payout(stripe_request(account))
        po = created.provider_payout_id.split("/")[1]

        with pytest.raises(ProviderPayoutNotFound, match="No such payout: 'po_missing'"):
            await stripe.get_payout(f"{account}/po_missing")
        with pytest.raises(ProviderPayoutNotFound, match="No such payout"):
            await stripe.get_payout(f"{other}/{po}")  # a payout is only visible on its own account


class TestStripeFind:
    async def test_a_payout_is_found_by_our_reference(
        self, stripe: StripeConnectProvider, fake_stripe: FakeStripe
    ) -> None:
        account = fake_stripe.add_account()
        request = stripe_request(account)
        created = await stripe.create_payout(request)

        assert [p.provider_payout_id for p in await stripe.find_payouts(request.reference)] == [
            created.provider_payout_id
        ]
        assert await stripe.find_payouts(new_ref()) == []

    async def test_a_transfer_whose_payout_never_happened_is_pending_until_asked_again(
        self, stripe: StripeConnectProvider, fake_stripe: FakeStripe
    ) -> None:
        account = fake_stripe.add_account()
        request = stripe_request(account)
        fake_stripe.fail_next(503, count=3, path="/v1/payouts")
        with pytest.raises(ProviderUnavailable):
            await stripe.create_payout(request)

        [waiting] = await stripe.find_payouts(request.reference)
        assert (waiting.status, waiting.provider_status) == (PayoutStatus.pending, "transferred")
        assert waiting.provider_payout_id.startswith("tr_")
        assert fake_stripe.balance_of(account, "usd") == 42_00  # on the connected account

        finished = await stripe.create_payout(request)  # same key: the transfer is replayed, not repeated
        assert [p.provider_payout_id for p in await stripe.find_payouts(request.reference)] == [
            finished.provider_payout_id
        ]
        assert _transfers_for(fake_stripe, request.reference) == 1

    async def test_a_reversed_transfer_is_found_as_reversed(
        self, stripe: StripeConnectProvider, fake_stripe: FakeStripe
    ) -> None:
        account = fake_stripe.add_account()
        request = stripe_request(
            account, destination=StripeAccountDestination(account_id=account, external_account_id="ba_gone")
        )
        with pytest.raises(PayoutRejected):
            await stripe.create_payout(request)

        [found] = await stripe.find_payouts(request.reference)
        assert found.status is PayoutStatus.reversed


class TestStripeWebhooks:
    async def _payout_event(
        self, stripe: StripeConnectProvider, fake: FakeStripe, **sign: Any
    ) -> tuple[Any, ...]:
        account = fake.add_account()
        created = await stripe.create_payout(stripe_request(account))
        fake.set_payout_status(created.provider_payout_id.split("/")[1], "paid")
        headers, body, event = fake.webhook(created.provider_payout_id.split("/")[1], **sign)
        return created, headers, body, event

    async def test_connect_payout_event_is_accepted_and_parsed(
        self, stripe: StripeConnectProvider, fake_stripe: FakeStripe
    ) -> None:
        created, headers, body, sent = await self._payout_event(stripe, fake_stripe)

        event = stripe.verify_webhook(headers, body)

        assert (event.event_id, event.event_type) == (sent["id"], "payout.paid")
        assert event.payout is not None
        assert (event.payout.provider_payout_id, event.payout.status) == (
            created.provider_payout_id,
            PayoutStatus.paid,
        )
        assert event.payout.reference == created.reference

    async def test_platform_transfer_event_uses_the_platform_secret(
        self, stripe: StripeConnectProvider, fake_stripe: FakeStripe
    ) -> None:
        account = fake_stripe.add_account()
        created = await stripe.create_payout(stripe_request(account))
        transfer_id = created.raw["metadata"]["referloop_transfer"]
        # The bank refused the payout, the money is back on the account, and staff pull it back.
        fake_stripe.set_payout_status(created.provider_payout_id.split("/")[1], "failed")
        fake_stripe.reverse_transfer(transfer_id)
        headers, body, _ = fake_stripe.webhook(transfer_id)

        event = stripe.verify_webhook(headers, body)

        assert event.event_type == "transfer.reversed"
        assert event.payout is not None
        assert (event.payout.provider_payout_id, event.payout.status) == (transfer_id, PayoutStatus.reversed)

    async def test_tampered_wrong_secret_and_malformed_are_refused(
        self, stripe: StripeConnectProvider, fake_stripe: FakeStripe
    ) -> None:
        _, headers, body, _ = await self._payout_event(stripe, fake_stripe)
        _, wrong_headers, wrong_body, _ = await self._payout_event(
            stripe, fake_stripe, secret="whsec_not_ours"
        )
        timestamp = headers["Stripe-Signature"].split(",")[0]
        cases = [
            (headers, body.replace(b'"paid"', b'"failed"'), "No Stripe-Signature v1 signature matches"),
            (wrong_headers, wrong_body, "No Stripe-Signature v1 signature matches"),
            ({"Stripe-Signature": "v1=abc"}, body, "Unable to extract the timestamp"),
            ({"Stripe-Signature": f"{timestamp},v0=abc"}, body, "has no v1 signature"),
            ({"Stripe-Signature": "t=soon,v1=abc"}, body, "not a number"),
            (
                {"Stripe-Signature": f"{timestamp},v1={'é' * 64}"},
                body,
                "No Stripe-Signature v1",
            ),  # a 500 before
            ({}, body, "missing"),
        ]
        for bad_headers, bad_body, message in cases:
            with pytest.raises(WebhookVerificationError, match=message):
                stripe.verify_webhook(bad_headers, bad_body)

    async def test_old_timestamps_are_refused_and_future_ones_accepted(
        self, stripe: StripeConnectProvider, fake_stripe: FakeStripe
    ) -> None:
        now = int(time.time())
        _, old_headers, old_body, _ = await self._payout_event(stripe, fake_stripe, timestamp=now - 301)
        _, edge_headers, edge_body, _ = await self._payout_event(stripe, fake_stripe, timestamp=now - 290)
        _, future_headers, future_body, _ = await self._payout_event(stripe, fake_stripe, timestamp=now + 600)

        with pytest.raises(WebhookVerificationError, match="too old"):
            stripe.verify_webhook(old_headers, old_body)
        assert stripe.verify_webhook(edge_headers, edge_body).payout is not None
        assert stripe.verify_webhook(future_headers, future_body).payout is not None  # as stripe-python

    async def test_any_matching_v1_is_enough_so_secrets_can_rotate(
        self, stripe: StripeConnectProvider, fake_stripe: FakeStripe
    ) -> None:
        _, headers, body, _ = await self._payout_event(stripe, fake_stripe, test_mode_v0=False)
        t, good = headers["Stripe-Signature"].split(",")
        rotated = {"Stripe-Signature": f"{t},v1={'0' * 64},{good},v0=dummy"}
        assert stripe.verify_webhook(rotated, body).payout is not None

    async def test_the_fake_signs_as_stripes_own_sdk_verifies(
        self, stripe: StripeConnectProvider, fake_stripe: FakeStripe
    ) -> None:
        stripe_sdk = pytest.importorskip("stripe")
        _, headers, body, sent = await self._payout_event(stripe, fake_stripe)

        event = stripe_sdk.Webhook.construct_event(
            body, headers["Stripe-Signature"], fake_stripe.connect_webhook_secret
        )
        assert event["id"] == sent["id"]
        # And the other way round: a header made by the SDK passes our check.
        sdk_header = stripe_sdk.WebhookSignature.generate_signature_header(
            body.decode(), fake_stripe.connect_webhook_secret
        )
        assert stripe.verify_webhook({"Stripe-Signature": sdk_header}, body).event_id == sent["id"]
        with pytest.raises(stripe_sdk.SignatureVerificationError):
            stripe_sdk.Webhook.construct_event(
                body + b" ", headers["Stripe-Signature"], fake_stripe.connect_webhook_secret
            )

    async def test_the_official_sdk_talks_to_the_fake(self, fake_stripe: FakeStripe) -> None:
        stripe_sdk = pytest.importorskip("stripe")
        client = stripe_sdk.StripeClient(
            fake_stripe.api_key, base_addresses={"api": fake_stripe.url}, max_network_retries=0
        )
        account = fake_stripe.add_account()
        key = new_key()
        params = {
            "amount": 500,
            "currency": "usd",
            "destination": account,
            "metadata": {"referloop_reference": new_ref()},
        }

        transfer = await asyncio.to_thread(client.v1.transfers.create, params, {"idempotency_key": key})
        assert (transfer.object, transfer.amount, transfer.destination) == ("transfer", 500, account)
        with pytest.raises(stripe_sdk.IdempotencyError):
            await asyncio.to_thread(
                client.v1.transfers.create, {**params, "amount": 501}, {"idempotency_key": key}
            )
        with pytest.raises(stripe_sdk.InvalidRequestError, match="No such payout"):
            await asyncio.to_thread(
                client.v1.payouts.retrieve, "po_missing", None, {"stripe_account": account}
            )


# --------------------------------------------------------------------------------------------------
class TestManual:
    async def test_a_manual_payout_waits_for_staff_and_is_idempotent(self) -> None:
        provider = ManualProvider()
        request = inr_request(destination=PaypalDestination(email="asha@example.com"))

        first = await provider.create_payout(request)
        again = await provider.create_payout(request)

        assert first.provider_payout_id == again.provider_payout_id == f"manual_{request.idempotency_key}"
        assert (first.status, first.provider_status) == (PayoutStatus.pending, "awaiting_staff")

    def test_staff_record_paid_with_a_reference_or_failed_with_a_reason(self) -> None:
        provider = ManualProvider()
        paid = provider.record_paid(
            "manual_abcd-1234", amount=500_00, currency="INR", reference=" HDFCN52024112512345 "
        )
        failed = provider.record_failed(
            "manual_abcd-5678", amount=500_00, currency="INR", reason="Account closed"
        )

        assert (paid.status, paid.bank_reference) == (PayoutStatus.paid, "HDFCN52024112512345")
        assert (failed.status, failed.failure_message) == (PayoutStatus.failed, "Account closed")
        assert failed.status.money_returned and not paid.status.money_returned

    @pytest.mark.parametrize("reference", ["", "ab", "<script>", "x" * 65])
    def test_a_reference_that_cannot_be_a_bank_reference_is_refused(self, reference: str) -> None:
        with pytest.raises(InvalidInput):
            ManualProvider().record_paid("manual_abcd-1234", amount=1, currency="INR", reference=reference)

    async def test_it_has_no_status_query_and_no_webhooks(self) -> None:
        provider = ManualProvider()
        with pytest.raises(UnsupportedPayout):
            await provider.get_payout("manual_abcd-1234")
        with pytest.raises(WebhookVerificationError):
            provider.verify_webhook({}, b"{}")


class TestStatusOrder:
    @pytest.mark.parametrize(
        ("current", "incoming", "applies"),
        [
            (PayoutStatus.pending, PayoutStatus.processing, True),
            (PayoutStatus.processing, PayoutStatus.paid, True),
            (PayoutStatus.pending, PayoutStatus.paid, True),  # a missed webhook in between
            (PayoutStatus.paid, PayoutStatus.reversed, True),  # late bank return
            (PayoutStatus.paid, PayoutStatus.failed, True),  # Stripe: failed after paid
            (PayoutStatus.reversed, PayoutStatus.paid, False),  # processed after reversed pays nothing
            (PayoutStatus.failed, PayoutStatus.reversed, False),  # one return, one re-credit
            (PayoutStatus.reversed, PayoutStatus.failed, False),
            (PayoutStatus.paid, PayoutStatus.paid, False),  # a repeated webhook
            (PayoutStatus.processing, PayoutStatus.pending, False),
            (PayoutStatus.cancelled, PayoutStatus.processing, False),
        ],
    )
    def test_only_a_later_state_replaces_the_one_held(
        self, current: PayoutStatus, incoming: PayoutStatus, applies: bool
    ) -> None:
        assert incoming.supersedes(current) is applies

    def test_which_states_mean_the_money_came_back(self) -> None:
        assert {s for s in PayoutStatus if s.money_returned} == {
            PayoutStatus.failed,
            PayoutStatus.cancelled,
            PayoutStatus.reversed,
        }


class TestRequestAndFactory:
    @pytest.mark.parametrize(
        "overrides",
        [
            {"idempotency_key": "abc"},  # too short for RazorpayX
            {"idempotency_key": "k" * 37},  # too long for RazorpayX
            {"idempotency_key": "has/slash"},
            {"amount": 0},
            {"amount": 10.5},
            {"amount": True},
            {"currency": "inr"},
            {"reference": "r" * 41},
        ],
    )
    def test_requests_no_provider_could_send_are_refused(self, overrides: dict[str, Any]) -> None:
        with pytest.raises(ValidationError):
            inr_request(**overrides)

    def test_a_decrypted_payout_method_is_a_destination(self) -> None:
        details = {"kind": "upi", "upi_id": "asha@okicici", "label": "My UPI"}
        request = inr_request(destination=details)
        assert request.destination == UpiDestination(upi_id="asha@okicici")

    async def test_the_configured_provider_is_built(
        self, fake_razorpayx: FakeRazorpayX, fake_stripe: FakeStripe
    ) -> None:
        settings = provider_settings(fake_razorpayx, fake_stripe)
        built = {name: build_payout_provider(settings, name) for name in PayoutProviderName}
        try:
            assert isinstance(built[PayoutProviderName.manual], ManualProvider)
            assert isinstance(built[PayoutProviderName.razorpayx], RazorpayXProvider)
            assert isinstance(built[PayoutProviderName.stripe], StripeConnectProvider)
            assert all(isinstance(p, PayoutProvider) for p in built.values())
            assert isinstance(build_payout_provider(settings), ManualProvider)  # the default
        finally:
            for provider in built.values():
                await provider.aclose()

    def test_a_subprocess_gets_the_same_provider_settings_from_its_environment(
        self, fake_razorpayx: FakeRazorpayX, fake_stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from referloop.config import Settings

        for name, value in provider_env(fake_razorpayx, fake_stripe).items():
            monkeypatch.setenv(name, value)
        settings = Settings()
        assert settings.razorpayx_base_url == fake_razorpayx.url
        assert settings.razorpayx_key_secret.get_secret_value() == fake_razorpayx.key_secret
        assert settings.stripe_api_key.get_secret_value() == fake_stripe.api_key

    def test_production_needs_the_chosen_providers_credentials(self) -> None:
        from referloop.config import Settings

        base = {
            "env": "production",
            "database_url": "postgresql://x/y",
            "redis_url": "redis://x",
            "jwt_private_keys": ["pem"],
            "field_encryption_keys": "k1:abc",
        }
        Settings.model_validate(base)  # manual needs nothing
        with pytest.raises(ValidationError, match="REFERLOOP_RAZORPAYX_KEY_SECRET"):
            Settings.model_validate(
                {**base, "payout_provider": "razorpayx", "razorpayx_key_id": "rzp_live_x"}
            )
