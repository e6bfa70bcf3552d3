"""Withdrawals paid through RazorpayX and Stripe Connect, against the local servers that answer as
their docs say: the worker calls the provider with our key, webhooks are verified and stored before
they are handled, repeated and out-of-order webhooks change nothing twice (`processed` after
`reversed` pays nothing, a reversal re-credits once), provider refusals and outages, and
`payouts sync` for payouts no webhook settled."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from referloop import ledger
from referloop.identity.models import Role
from referloop.payouts.providers import ProviderUnavailable
from referloop.payouts.withdrawals.service.sync import stuck_withdrawals, sync_one
from referloop.runtime import Runtime
from tests.factories import (
    Member,
    Staff,
    asgi_client,
    create_staff,
    credit_member,
    db_rows,
    db_value,
    register_member,
)
from tests.fakes import FakeRazorpayX, FakeStripe, provider_env
from tests.notifications.support import run_cli, worker_env
from tests.payouts.test_withdrawals_support import (
    assert_reconciles,
    balance,
    events_of,
    ledger_entries,
    provider_overrides,
    request_withdrawal,
    run_submissions,
    stripe_method,
    usable_method,
)


def provider_key(withdrawal_id: str, attempt: int = 1) -> str:
    return f"{uuid.UUID(withdrawal_id).hex}-{attempt}"


class Setup:
    """An app paying through one provider, an ASGI client for it, a member and a finance user."""

    def __init__(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client
        self.rt: Runtime = app.state.runtime
        self.transport = httpx.ASGITransport(app=app)

    async def member_with(self, amount: int, currency: str = "INR") -> Member:
        member = await register_member(self.client)
        await credit_member(self.rt, member.id, amount, currency)
        return member

    async def staff(self) -> Staff:
        return await create_staff(self.client, self.rt, role=Role.finance)

    async def withdrawal(
        self, member: Member, method_id: str, amount: int, currency: str = "INR"
    ) -> dict[str, Any]:
        r = await request_withdrawal(self.client, member, method_id, amount, currency)
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body

    async def staff_view(self, staff: Staff, withdrawal_id: str) -> dict[str, Any]:
        r = await self.client.get(f"/v1/staff/withdrawals/{withdrawal_id}", headers=staff.auth)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body


@pytest.fixture
async def rzp(app_factory: Callable[..., FastAPI], fake_razorpayx: FakeRazorpayX) -> AsyncIterator[Setup]:
    # The fake is shared by this worker's tests, and one provider test plants a hand-made payout (no
    # `created_at`) in it, which the fake's list endpoint cannot sort: drop such leftovers.
    with fake_razorpayx.lock:
        for planted in [p for p, v in fake_razorpayx.payouts.items() if "created_at" not in v]:
            del fake_razorpayx.payouts[planted]
    app = app_factory(payout_provider="razorpayx", **provider_overrides(fake_razorpayx))
    async with asgi_client(app) as client:
        yield Setup(app, client)


@pytest.fixture
async def stp(app_factory: Callable[..., FastAPI], fake_stripe: FakeStripe) -> AsyncIterator[Setup]:
    app = app_factory(payout_provider="stripe", **provider_overrides(stripe=fake_stripe))
    async with asgi_client(app) as client:
        yield Setup(app, client)


async def deliver_rzp(s: Setup, fake: FakeRazorpayX, headers: dict[str, str], body: bytes) -> httpx.Response:
    return await fake.deliver("http://test/webhooks/razorpayx", headers, body, transport=s.transport)


async def deliver_stripe(s: Setup, fake: FakeStripe, headers: dict[str, str], body: bytes) -> httpx.Response:
    return await fake.deliver("http://test/webhooks/stripe", headers, body, transport=s.transport)


class TestRazorpayX:
    async def test_full_life_with_repeated_and_out_of_order_webhooks(
        self, rzp: Setup, fake_razorpayx: FakeRazorpayX
    ) -> None:
        fake = fake_razorpayx
        member = await rzp.member_with(50_000)
        staff = await rzp.staff()
        method_id = await usable_method(rzp.client, rzp.rt, member)
        w = await rzp.withdrawal(member, method_id, 20_000)
        assert w["state"] == "approved"

        assert await run_submissions(rzp.rt, w["id"]) == 1

        key = provider_key(w["id"])
        [payout_id] = fake.created_by_key[key]
        sent = fake.payouts[payout_id]
        assert (sent["reference_id"], sent["amount"], sent["mode"]) == (w["id"], 20_000, "IMPS")
        assert sent["notes"] == {"referloop_attempt": "1"}
        view = await rzp.staff_view(staff, w["id"])
        assert (view["state"], view["provider_payout_id"], view["provider_status"]) == (
            "processing",
            payout_id,
            "processing",
        )
        early_headers, early_body = fake.webhook(payout_id)  # payout.initiated, sent early

        fake.set_status(payout_id, "processed", utr="HDFCN00000012345")
        processed_headers, processed_body = fake.webhook(payout_id)
        r = await deliver_rzp(rzp, fake, processed_headers, processed_body)
        assert (r.status_code, r.json()) == (200, {"received": True, "duplicate": False})
        view = await rzp.staff_view(staff, w["id"])
        assert (view["state"], view["bank_reference"]) == ("paid", "HDFCN00000012345")
        assert view["provider_fee"] == fake.fees + fake.tax
        assert await balance(rzp.rt, member.id) == ledger.MemberBalance("INR", 0, 30_000, 0)

        # The same delivery again, and the older `initiated` event arriving late: nothing changes.
        r = await deliver_rzp(rzp, fake, processed_headers, processed_body)
        assert (r.status_code, r.json()["duplicate"]) == (200, True)
        r = await deliver_rzp(rzp, fake, early_headers, early_body)
        assert (r.status_code, r.json()["duplicate"]) == (200, False)
        assert (await rzp.staff_view(staff, w["id"]))["state"] == "paid"
        stored = await db_value(
            rzp.rt,
            "SELECT count(*) FROM payout_webhook_inbox WHERE source = 'razorpayx' AND external_id = :e",
            e=processed_headers["X-Razorpay-Event-Id"],
        )
        assert stored == 1

        # The bank returns it: re-credited once, however often and in whatever order events come.
        fake.set_status(payout_id, "reversed", reason="beneficiary_bank_rejected")
        reversed_headers, reversed_body = fake.webhook(payout_id)
        r = await deliver_rzp(rzp, fake, reversed_headers, reversed_body)
        assert r.status_code == 200
        view = await rzp.staff_view(staff, w["id"])
        assert (view["state"], view["failure_code"]) == ("reversed", "beneficiary_bank_rejected")
        assert await balance(rzp.rt, member.id) == ledger.MemberBalance("INR", 0, 50_000, 0)
        new_id = str(uuid.uuid4())
        await deliver_rzp(rzp, fake, fake.sign(reversed_body, event_id=new_id), reversed_body)  # a re-send
        await deliver_rzp(rzp, fake, fake.sign(processed_body, event_id=new_id + "x"), processed_body)  # late
        fake.set_status(payout_id, "failed")  # RazorpayX current accounts: reversed, then failed
        await deliver_rzp(rzp, fake, *fake.webhook(payout_id))
        assert (await rzp.staff_view(staff, w["id"]))["state"] == "reversed"
        assert await balance(rzp.rt, member.id) == ledger.MemberBalance("INR", 0, 50_000, 0)
        assert await ledger_entries(rzp.rt, w["id"]) == [
            "withdrawal.hold",
            "withdrawal.paid",
            "withdrawal.reversed",
        ]
        assert await events_of(rzp.rt, w["id"]) == ["requested", "approved", "processing", "paid", "reversed"]
        assert len(fake.created_by_key[key]) == 1
        await assert_reconciles(rzp.rt)

    async def test_failed_payout_releases_and_a_retry_is_a_new_attempt(
        self, rzp: Setup, fake_razorpayx: FakeRazorpayX
    ) -> None:
        fake = fake_razorpayx
        member = await rzp.member_with(10_000)
        staff = await rzp.staff()
        method_id = await usable_method(
            rzp.client, rzp.rt, member, {"kind": "upi", "upi_id": f"m{uuid.uuid4().hex[:8]}@okhdfc"}
        )
        w = await rzp.withdrawal(member, method_id, 10_000)
        await run_submissions(rzp.rt, w["id"])
        [first] = fake.created_by_key[provider_key(w["id"])]
        assert fake.payouts[first]["mode"] == "UPI"

        fake.set_status(first, "failed", reason="invalid_vpa", description="The UPI id is invalid.")
        await deliver_rzp(rzp, fake, *fake.webhook(first))
        view = await rzp.staff_view(staff, w["id"])
        assert (view["state"], view["failure_message"]) == ("failed", "The UPI id is invalid.")
        assert await balance(rzp.rt, member.id) == ledger.MemberBalance("INR", 0, 10_000, 0)

        r = await rzp.client.post(
            f"/v1/staff/withdrawals/{w['id']}/retry",
            headers={**staff.auth, "Idempotency-Key": str(uuid.uuid4())},
        )
        assert r.status_code == 200, r.text
        await run_submissions(rzp.rt, w["id"])
        [second] = fake.created_by_key[provider_key(w["id"], 2)]
        assert second != first
        # The first payout's money coming back later is no concern of the second attempt.
        fake.set_status(first, "reversed")
        await deliver_rzp(rzp, fake, *fake.webhook(first))
        assert (await rzp.staff_view(staff, w["id"]))["state"] == "processing"
        fake.set_status(second, "processed")
        await deliver_rzp(rzp, fake, *fake.webhook(second))
        assert (await rzp.staff_view(staff, w["id"]))["state"] == "paid"
        assert await balance(rzp.rt, member.id) == ledger.MemberBalance("INR", 0, 0, 0)
        await assert_reconciles(rzp.rt)

    async def test_a_method_changed_after_the_request_is_not_paid_before_its_cool_down(
        self, rzp: Setup, fake_razorpayx: FakeRazorpayX
    ) -> None:
        """The method's details are read when the payout is sent: new ones must have sat out their
        24 hours, or a taken-over account could redirect a withdrawal asked for before the change."""
        member = await rzp.member_with(10_000)
        staff = await rzp.staff()
        method_id = await usable_method(rzp.client, rzp.rt, member)
        w = await rzp.withdrawal(member, method_id, 10_000)
        assert w["state"] == "approved"  # and its submission not yet made
        r = await rzp.client.put(
            f"/v1/payout-methods/{method_id}",
            json={"kind": "upi", "upi_id": f"thief{uuid.uuid4().hex[:6]}@okaxis"},
            headers=member.auth,
        )
        assert r.status_code == 200, r.text

        await run_submissions(rzp.rt, w["id"])

        assert fake_razorpayx.created_by_key.get(provider_key(w["id"])) is None  # nothing was sent
        view = await rzp.staff_view(staff, w["id"])
        assert (view["state"], view["failure_code"]) == ("failed", "payout_method_changed")
        mine = (await rzp.client.get(f"/v1/withdrawals/{w['id']}", headers=member.auth)).json()
        assert "changed after this withdrawal was requested" in mine["failure_message"]
        assert await balance(rzp.rt, member.id) == ledger.MemberBalance("INR", 0, 10_000, 0)
        await assert_reconciles(rzp.rt)

    async def test_a_refused_payout_fails_and_releases(
        self, app_factory: Callable[..., FastAPI], fake_razorpayx: FakeRazorpayX
    ) -> None:
        app = app_factory(
            payout_provider="razorpayx",
            **provider_overrides(fake_razorpayx, razorpayx_queue_if_low_balance=False),
        )
        fake_razorpayx.balance = 0  # our RazorpayX account is empty: the payout is refused
        async with asgi_client(app) as client:
            s = Setup(app, client)
            member = await s.member_with(5_000)
            w = await s.withdrawal(member, await usable_method(client, s.rt, member), 5_000)
            await run_submissions(s.rt, w["id"])
            mine = (await client.get(f"/v1/withdrawals/{w['id']}", headers=member.auth)).json()
            staff_view = await s.staff_view(await s.staff(), w["id"])
        assert mine["state"] == "failed"
        # The provider's words are about our account: staff see them, the member sees what it means.
        assert mine["failure_message"].startswith("The payout provider refused this payout")
        assert "does not have enough balance" in staff_view["last_error"]
        assert fake_razorpayx.created_by_key.get(provider_key(w["id"])) is None
        assert await balance(s.rt, member.id) == ledger.MemberBalance("INR", 0, 5_000, 0)
        await assert_reconciles(s.rt)

    async def test_lost_answers_are_retried_with_the_same_key_and_pay_once(
        self, rzp: Setup, fake_razorpayx: FakeRazorpayX
    ) -> None:
        member = await rzp.member_with(7_000)
        staff = await rzp.staff()
        w = await rzp.withdrawal(member, await usable_method(rzp.client, rzp.rt, member), 7_000)
        # The payout is made, but every answer (3 tries in-process) is lost on the way back.
        fake_razorpayx.fail_next(500, after=True, count=3, path="/v1/payouts")

        with pytest.raises(ProviderUnavailable):
            await run_submissions(rzp.rt, w["id"])
        view = await rzp.staff_view(staff, w["id"])
        assert (view["state"], view["provider_payout_id"]) == ("processing", None)
        assert view["last_error"].startswith("payout_provider_unavailable")
        assert await balance(rzp.rt, member.id) == ledger.MemberBalance("INR", 0, 0, 7_000)

        # The outbox's next try asks for this attempt's payout by our reference before sending
        # anything, finds the one the lost answers were about, and adopts it: no fourth POST.
        assert await run_submissions(rzp.rt, w["id"]) == 1
        key = provider_key(w["id"])
        [payout_id] = fake_razorpayx.created_by_key[key]
        assert (
            len(
                [
                    r
                    for r in fake_razorpayx.requests_to("POST", "/v1/payouts")
                    if r.headers.get("x-payout-idempotency") == key
                ]
            )
            == 3
        )
        assert fake_razorpayx.requests_to("GET", "/v1/payouts")
        assert (await rzp.staff_view(staff, w["id"]))["provider_payout_id"] == payout_id
        assert await run_submissions(rzp.rt, w["id"]) == 0  # handled: a redelivery does nothing

    async def test_what_razorpayx_cannot_pay_is_refused_when_asked(self, rzp: Setup) -> None:
        member = await rzp.member_with(5_000)
        await credit_member(rzp.rt, member.id, 5_000, "USD")
        paypal = await usable_method(
            rzp.client, rzp.rt, member, {"kind": "paypal", "email": "asha@example.com"}
        )
        bank = await usable_method(rzp.client, rzp.rt, member)

        r = await request_withdrawal(rzp.client, member, paypal, 1_000)
        assert (r.status_code, r.json()["code"], r.json()["supported_kinds"]) == (
            422,
            "payout_method_not_supported",
            ["bank_account", "upi"],
        )
        r = await request_withdrawal(rzp.client, member, bank, 1_000, "USD")
        assert (r.status_code, r.json()["supported_currencies"]) == (422, ["INR"])
        assert await balance(rzp.rt, member.id) == ledger.MemberBalance("INR", 0, 5_000, 0)

    async def test_unsigned_or_forged_webhooks_are_refused_and_not_stored(
        self, rzp: Setup, fake_razorpayx: FakeRazorpayX
    ) -> None:
        member = await rzp.member_with(5_000)
        w = await rzp.withdrawal(member, await usable_method(rzp.client, rzp.rt, member), 5_000)
        await run_submissions(rzp.rt, w["id"])
        [payout_id] = fake_razorpayx.created_by_key[provider_key(w["id"])]
        fake_razorpayx.set_status(payout_id, "processed")
        headers, body = fake_razorpayx.webhook(payout_id, secret="not-our-secret")

        r = await deliver_rzp(rzp, fake_razorpayx, headers, body)
        assert (r.status_code, r.json()["code"]) == (400, "invalid_webhook_signature")
        r = await deliver_rzp(rzp, fake_razorpayx, {"Content-Type": "application/json"}, body)
        assert r.status_code == 400
        assert (
            await db_value(
                rzp.rt,
                "SELECT count(*) FROM payout_webhook_inbox WHERE external_id = :e",
                e=headers["X-Razorpay-Event-Id"],
            )
            == 0
        )
        mine = (await rzp.client.get(f"/v1/withdrawals/{w['id']}", headers=member.auth)).json()
        assert mine["state"] == "processing"
        assert await balance(rzp.rt, member.id) == ledger.MemberBalance("INR", 0, 0, 5_000)


class TestSync:
    async def test_sync_applies_what_no_webhook_said(self, rzp: Setup, fake_razorpayx: FakeRazorpayX) -> None:
        member = await rzp.member_with(6_000)
        w = await rzp.withdrawal(member, await usable_method(rzp.client, rzp.rt, member), 6_000)
        await run_submissions(rzp.rt, w["id"])
        [payout_id] = fake_razorpayx.created_by_key[provider_key(w["id"])]
        fake_razorpayx.set_status(payout_id, "processed")  # and its webhook never arrives

        wid = uuid.UUID(w["id"])
        assert wid not in await stuck_withdrawals(rzp.rt, 600, 100_000)  # not stuck long enough yet
        await db_rows(
            rzp.rt,
            "UPDATE withdrawals SET processing_at = now() - interval '1 hour' WHERE id = :w",
            w=w["id"],
        )
        assert wid in await stuck_withdrawals(rzp.rt, 600, 100_000)

        assert await sync_one(rzp.rt, wid) == "paid"
        assert await balance(rzp.rt, member.id) == ledger.MemberBalance("INR", 0, 0, 0)
        assert wid not in await stuck_withdrawals(rzp.rt, 600, 100_000)
        await assert_reconciles(rzp.rt)

    async def test_sync_finds_a_payout_whose_answer_was_never_saved_even_after_keys_expire(
        self, rzp: Setup, fake_razorpayx: FakeRazorpayX
    ) -> None:
        member = await rzp.member_with(6_000)
        w = await rzp.withdrawal(member, await usable_method(rzp.client, rzp.rt, member), 6_000)
        await run_submissions(rzp.rt, w["id"])
        key = provider_key(w["id"])
        [payout_id] = fake_razorpayx.created_by_key[key]
        # As if the worker died between the provider's answer and saving it, a week ago.
        await db_rows(
            rzp.rt,
            "UPDATE withdrawals SET provider_payout_id = NULL, provider_status = NULL,"
            " processing_at = now() - interval '7 days' WHERE id = :w",
            w=w["id"],
        )
        fake_razorpayx.expire_idempotency_keys()  # asking create_payout again would pay twice now

        assert await sync_one(rzp.rt, uuid.UUID(w["id"])) == "recorded: processing"
        assert fake_razorpayx.created_by_key[key] == [payout_id]
        mine = (await rzp.client.get(f"/v1/withdrawals/{w['id']}", headers=member.auth)).json()
        assert mine["state"] == "processing"

    async def test_sync_sends_a_payout_the_provider_never_received(
        self, rzp: Setup, fake_razorpayx: FakeRazorpayX
    ) -> None:
        member = await rzp.member_with(6_000)
        staff = await rzp.staff()
        w = await rzp.withdrawal(member, await usable_method(rzp.client, rzp.rt, member), 6_000)
        fake_razorpayx.fail_next(503, count=3, path="/v1/payouts")  # refused before any work, 3 times
        with pytest.raises(ProviderUnavailable):
            await run_submissions(rzp.rt, w["id"])
        assert fake_razorpayx.payouts_for_reference(w["id"]) == []

        outcome = await sync_one(rzp.rt, uuid.UUID(w["id"]))

        assert outcome == "submitted: recorded: processing"
        [payout_id] = fake_razorpayx.created_by_key[provider_key(w["id"])]
        assert (await rzp.staff_view(staff, w["id"]))["provider_payout_id"] == payout_id

    async def test_sync_command(self, rzp: Setup, fake_razorpayx: FakeRazorpayX) -> None:
        member = await rzp.member_with(6_000)
        w = await rzp.withdrawal(member, await usable_method(rzp.client, rzp.rt, member), 6_000)
        await run_submissions(rzp.rt, w["id"])
        [payout_id] = fake_razorpayx.created_by_key[provider_key(w["id"])]
        fake_razorpayx.set_status(payout_id, "failed")
        await db_rows(
            rzp.rt,
            "UPDATE withdrawals SET processing_at = now() - interval '1 hour' WHERE id = :w",
            w=w["id"],
        )
        env = worker_env(rzp.rt.settings, payout_provider="razorpayx") | provider_env(fake_razorpayx)

        _, out, err = await run_cli(env, "payouts", "sync", "--older-than", "600")

        assert f"{w['id']}: failed" in out, out + err
        assert await balance(rzp.rt, member.id) == ledger.MemberBalance("INR", 0, 6_000, 0)


class TestStripe:
    async def test_full_life_transfer_then_payout_then_late_failure(
        self, stp: Setup, fake_stripe: FakeStripe
    ) -> None:
        fake = fake_stripe
        account = fake.add_account()
        member = await stp.member_with(10_000, "USD")
        staff = await stp.staff()
        method_id = await stripe_method(stp.rt, member.id, account)
        w = await stp.withdrawal(member, method_id, 4_200, "USD")

        await run_submissions(stp.rt, w["id"])

        [transfer] = [t for t in fake.transfers.values() if t["transfer_group"] == w["id"]]
        assert (transfer["amount"], transfer["currency"], transfer["destination"]) == (4_200, "usd", account)
        [payout_id] = [
            p
            for p, a in fake.payout_account.items()
            if fake.payouts[p]["metadata"].get("referloop_transfer") == transfer["id"]
        ]
        key = provider_key(w["id"])
        assert [r.headers["idempotency-key"] for r in fake.requests_to("POST", "/v1/payouts")][
            -1
        ] == f"{key}-payout"
        view = await stp.staff_view(staff, w["id"])
        assert (view["state"], view["provider_payout_id"]) == ("processing", f"{account}/{payout_id}")

        # The transfer reaching the connected account is not the member being paid.
        headers, body, _ = fake.webhook(transfer["id"])
        assert (await deliver_stripe(stp, fake, headers, body)).status_code == 200
        assert (await stp.staff_view(staff, w["id"]))["state"] == "processing"

        fake.set_payout_status(payout_id, "in_transit")
        fake.set_payout_status(payout_id, "paid")
        headers, body, _ = fake.webhook(payout_id)
        assert (await deliver_stripe(stp, fake, headers, body)).json() == {
            "received": True,
            "duplicate": False,
        }
        assert (await stp.staff_view(staff, w["id"]))["state"] == "paid"
        assert await balance(stp.rt, member.id, "USD") == ledger.MemberBalance("USD", 0, 5_800, 0)
        assert (await deliver_stripe(stp, fake, headers, body)).json()["duplicate"] is True

        fake.set_payout_status(payout_id, "failed", failure_code="account_closed")  # within 5 business days
        failed_headers, failed_body, _ = fake.webhook(payout_id)
        await deliver_stripe(stp, fake, failed_headers, failed_body)
        await deliver_stripe(stp, fake, headers, body)  # `paid` again, late: nothing
        view = await stp.staff_view(staff, w["id"])
        assert (view["state"], view["failure_code"]) == ("reversed", "account_closed")
        # The failed payout put the money back on the connected account: the transfer is reversed
        # before the wallet is credited again, or the member would have it twice.
        assert fake.transfers[transfer["id"]]["reversed"] is True
        assert fake.balance_of(account, "usd") == 0
        [reversal] = fake.requests_to("POST", f"/v1/transfers/{transfer['id']}/reversals")  # once
        assert reversal.headers["idempotency-key"].startswith(f"{key}-reversal-")
        assert await balance(stp.rt, member.id, "USD") == ledger.MemberBalance("USD", 0, 10_000, 0)
        assert await ledger_entries(stp.rt, w["id"]) == [
            "withdrawal.hold",
            "withdrawal.paid",
            "withdrawal.reversed",
        ]
        await assert_reconciles(stp.rt)

    async def paid_through_connect(
        self, stp: Setup, fake: FakeStripe
    ) -> tuple[Member, dict[str, Any], str, str]:
        """A member paid 4,200 USD cents through a transfer and their connected account's payout."""
        account = fake.add_account()
        member = await stp.member_with(10_000, "USD")
        method_id = await stripe_method(stp.rt, member.id, account)
        w = await stp.withdrawal(member, method_id, 4_200, "USD")
        await run_submissions(stp.rt, w["id"])
        [transfer] = [t["id"] for t in fake.transfers.values() if t["transfer_group"] == w["id"]]
        [payout_id] = [
            p
            for p in fake.payout_account
            if fake.payouts[p]["metadata"].get("referloop_transfer") == transfer
        ]
        fake.set_payout_status(payout_id, "in_transit")
        fake.set_payout_status(payout_id, "paid")
        await deliver_stripe(stp, fake, *fake.webhook(payout_id)[:2])
        assert await balance(stp.rt, member.id, "USD") == ledger.MemberBalance("USD", 0, 5_800, 0)
        return member, w, account, payout_id

    async def test_a_late_failure_while_stripe_cannot_reverse_the_transfer_is_taken_again_later(
        self, stp: Setup, fake_stripe: FakeStripe
    ) -> None:
        fake = fake_stripe
        member, w, account, payout_id = await self.paid_through_connect(stp, fake)
        fake.set_payout_status(payout_id, "failed", failure_code="account_closed")
        headers, body, _ = fake.webhook(payout_id)
        fake.fail_next(500, count=stp.rt.settings.payout_provider_max_attempts)  # Stripe: a bad minute
        refused = await deliver_stripe(stp, fake, headers, body)
        assert refused.status_code >= 500  # so Stripe delivers the event again
        assert (await stp.staff_view(await stp.staff(), w["id"]))["state"] == "paid"
        assert await balance(stp.rt, member.id, "USD") == ledger.MemberBalance("USD", 0, 5_800, 0)

        again = await deliver_stripe(stp, fake, headers, body)
        assert again.status_code == 200 and again.json()["duplicate"] is False
        assert (await stp.staff_view(await stp.staff(), w["id"]))["state"] == "reversed"
        assert fake.balance_of(account, "usd") == 0
        assert await balance(stp.rt, member.id, "USD") == ledger.MemberBalance("USD", 0, 10_000, 0)
        assert (await deliver_stripe(stp, fake, headers, body)).json()["duplicate"] is True
        await assert_reconciles(stp.rt)

    async def test_money_that_cannot_be_taken_back_from_the_connected_account_is_not_credited_twice(
        self, stp: Setup, fake_stripe: FakeStripe
    ) -> None:
        fake = fake_stripe
        member, w, account, payout_id = await self.paid_through_connect(stp, fake)
        fake.set_payout_status(payout_id, "failed", failure_code="account_closed")
        with fake.lock:
            fake.accounts[account].balance["usd"] = 0  # e.g. paid out again from Stripe's dashboard
        answer = await deliver_stripe(stp, fake, *fake.webhook(payout_id)[:2])
        assert answer.status_code == 200  # nothing Stripe can fix by sending it again
        view = await stp.staff_view(await stp.staff(), w["id"])
        assert view["state"] == "paid" and "balance_insufficient" in view["last_error"]
        assert await balance(stp.rt, member.id, "USD") == ledger.MemberBalance("USD", 0, 5_800, 0)
        await assert_reconciles(stp.rt)

    async def test_a_failure_whose_money_stripe_cannot_take_back_yet_is_settled_by_a_later_sync(
        self, stp: Setup, fake_stripe: FakeStripe
    ) -> None:
        # The connected account's payout fails while the withdrawal is still processing, and the
        # transfer cannot be reversed at first: its status must not be recorded as failed, or every
        # later report ("failed does not supersede failed") and sync would leave it stuck with the
        # amount held for good.
        fake = fake_stripe
        account = fake.add_account()
        member = await stp.member_with(10_000, "USD")
        w = await stp.withdrawal(member, await stripe_method(stp.rt, member.id, account), 4_200, "USD")
        await run_submissions(stp.rt, w["id"])
        [transfer] = [t["id"] for t in fake.transfers.values() if t["transfer_group"] == w["id"]]
        [payout_id] = [
            p
            for p in fake.payout_account
            if fake.payouts[p]["metadata"].get("referloop_transfer") == transfer
        ]
        fake.set_payout_status(payout_id, "failed", failure_code="account_closed")
        with fake.lock:
            saved, fake.accounts[account].balance["usd"] = fake.accounts[account].balance["usd"], 0
        assert (await deliver_stripe(stp, fake, *fake.webhook(payout_id)[:2])).status_code == 200
        view = await stp.staff_view(await stp.staff(), w["id"])
        assert view["state"] == "processing" and "balance_insufficient" in view["last_error"]
        assert await balance(stp.rt, member.id, "USD") == ledger.MemberBalance("USD", 0, 5_800, 4_200)

        with fake.lock:
            fake.accounts[account].balance["usd"] = saved  # whatever kept it there is settled
        assert await sync_one(stp.rt, uuid.UUID(w["id"])) == "failed"
        assert (await stp.staff_view(await stp.staff(), w["id"]))["state"] == "failed"
        assert await balance(stp.rt, member.id, "USD") == ledger.MemberBalance("USD", 0, 10_000, 0)
        await assert_reconciles(stp.rt)

    async def test_a_transfer_whose_payout_step_never_happened_is_reversed_before_the_money_comes_back(
        self, stp: Setup, fake_stripe: FakeStripe
    ) -> None:
        # The transfer reached the member's connected account, the payout step got only 5xx, and the
        # member removed the method meanwhile: failing the withdrawal used to credit the wallet while
        # the transfer stayed on the account (paid twice).
        account = fake_stripe.add_account()
        member = await stp.member_with(6_000, "USD")
        method_id = await stripe_method(stp.rt, member.id, account)
        w = await stp.withdrawal(member, method_id, 6_000, "USD")
        fake_stripe.fail_next(500, count=stp.rt.settings.payout_provider_max_attempts, path="/v1/payouts")
        with pytest.raises(ProviderUnavailable):
            await run_submissions(stp.rt, w["id"])
        [transfer] = [t for t in fake_stripe.transfers.values() if t["transfer_group"] == w["id"]]
        assert fake_stripe.balance_of(account, "usd") == 6_000  # on the member's Stripe account
        r = await stp.client.delete(f"/v1/payout-methods/{method_id}", headers=member.auth)
        assert r.status_code == 204, r.text

        assert await run_submissions(stp.rt, w["id"]) == 1  # the outbox's next try
        view = await stp.staff_view(await stp.staff(), w["id"])
        assert view["state"] == "failed", view
        assert fake_stripe.transfers[transfer["id"]]["reversed"] is True
        assert fake_stripe.balance_of(account, "usd") == 0
        assert await balance(stp.rt, member.id, "USD") == ledger.MemberBalance("USD", 0, 6_000, 0)
        await assert_reconciles(stp.rt)

    async def test_a_refused_payout_step_reverses_the_transfer_and_fails(
        self, stp: Setup, fake_stripe: FakeStripe
    ) -> None:
        account = fake_stripe.add_account()
        member = await stp.member_with(3_000, "EUR")
        method_id = await stripe_method(stp.rt, member.id, account, external_account_id="ba_doesnotexist")
        w = await stp.withdrawal(member, method_id, 3_000, "EUR")

        await run_submissions(stp.rt, w["id"])

        mine = (await stp.client.get(f"/v1/withdrawals/{w['id']}", headers=member.auth)).json()
        assert mine["state"] == "failed"
        view = await stp.staff_view(await stp.staff(), w["id"])
        assert (view["failure_code"], view["state"]) == ("resource_missing", "failed")
        assert "No such external account" in view["last_error"]
        [transfer] = [t for t in fake_stripe.transfers.values() if t["transfer_group"] == w["id"]]
        assert transfer["reversed"] is True
        assert fake_stripe.balance_of(account, "eur") == 0
        assert await balance(stp.rt, member.id, "EUR") == ledger.MemberBalance("EUR", 0, 3_000, 0)
        await assert_reconciles(stp.rt)
