"""Withdrawals through the HTTP API with the default `manual` provider: the request and its hold,
limits and the KYC gate (refusals leave nothing behind), the state machine (cancel, approve,
reject, mark paid or failed, retry), fees as their own postings, idempotency, and member isolation.
Every money test ends with `ledger reconcile` finding nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from referloop import ledger
from referloop.config import WithdrawalPolicy
from referloop.identity.models import Role
from referloop.runtime import Runtime
from tests.factories import (
    Staff,
    asgi_client,
    create_staff,
    credit_member,
    db_rows,
    db_value,
    register_member,
)
from tests.payouts.test_withdrawals_support import (
    assert_reconciles,
    audit_actions,
    balance,
    events_of,
    ledger_entries,
    request_withdrawal,
    run_submissions,
    usable_method,
)


@pytest.fixture
async def finance(client: httpx.AsyncClient, runtime: Runtime) -> Staff:
    return await create_staff(client, runtime, role=Role.finance)


async def withdrawal_count(rt: Runtime, member_id: str) -> int:
    return int(await db_value(rt, "SELECT count(*) FROM withdrawals WHERE member_id = :m", m=member_id))


async def ledger_entry_count(rt: Runtime, member_id: str) -> int:
    return int(
        await db_value(
            rt, "SELECT count(DISTINCT entry_id) FROM ledger_postings WHERE member_id = :m", m=member_id
        )
    )


class TestRequest:
    async def test_small_withdrawal_is_held_and_approved_automatically(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        member = await register_member(client)
        await credit_member(runtime, member.id, 10_000)
        method_id = await usable_method(client, runtime, member)

        r = await request_withdrawal(client, member, method_id, 2_500)

        assert r.status_code == 201, r.text
        body = r.json()
        assert body["state"] == "approved"  # below the auto-approval threshold
        assert body["amount"] == {"amount": 2_500, "currency": "INR"}
        assert body["fee"] == {"amount": 0, "currency": "INR"}
        assert body["payout_amount"] == {"amount": 2_500, "currency": "INR"}
        assert body["payout_method"]["id"] == method_id
        assert body["payout_method"]["masked"].startswith("HDFC ••••")
        assert await balance(runtime, member.id) == ledger.MemberBalance("INR", 0, 7_500, 2_500)
        assert await events_of(runtime, body["id"]) == ["requested", "approved"]
        assert await audit_actions(runtime, body["id"]) == ["withdrawal.requested", "withdrawal.approved"]

        r = await client.get(f"/v1/withdrawals/{body['id']}", headers=member.auth)
        assert r.status_code == 200 and r.json() == body
        r = await client.get("/v1/withdrawals", headers=member.auth)
        assert [w["id"] for w in r.json()["items"]] == [body["id"]]
        await assert_reconciles(runtime)

    async def test_insufficient_balance_is_refused_and_changes_nothing(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        member = await register_member(client)
        await credit_member(runtime, member.id, 1_000)
        method_id = await usable_method(client, runtime, member)
        entries_before = await ledger_entry_count(runtime, member.id)
        key = str(uuid.uuid4())

        r = await request_withdrawal(client, member, method_id, 1_500, key=key)

        assert r.status_code == 422, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "insufficient_funds"
        assert r.json()["available"] == 1_000
        assert await withdrawal_count(runtime, member.id) == 0
        assert await ledger_entry_count(runtime, member.id) == entries_before
        assert await balance(runtime, member.id) == ledger.MemberBalance("INR", 0, 1_000, 0)
        # Nothing was stored under the key either: once the money is there, the same key works.
        await credit_member(runtime, member.id, 500)
        r = await request_withdrawal(client, member, method_id, 1_500, key=key)
        assert r.status_code == 201, r.text

    async def test_same_key_with_another_body_is_refused_without_effect(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        member = await register_member(client)
        await credit_member(runtime, member.id, 5_000)
        method_id = await usable_method(client, runtime, member)
        key = str(uuid.uuid4())
        first = await request_withdrawal(client, member, method_id, 1_000, key=key)
        assert first.status_code == 201

        other = await request_withdrawal(client, member, method_id, 2_000, key=key)

        assert other.status_code == 422
        assert other.json()["code"] == "idempotency_key_reused"
        assert await withdrawal_count(runtime, member.id) == 1
        assert await balance(runtime, member.id) == ledger.MemberBalance("INR", 0, 4_000, 1_000)
        replay = await request_withdrawal(client, member, method_id, 1_000, key=key)
        assert (replay.status_code, replay.json()) == (201, first.json())
        assert replay.headers["idempotent-replayed"] == "true"

    async def test_idempotency_key_is_required(self, client: httpx.AsyncClient, runtime: Runtime) -> None:
        member = await register_member(client)
        r = await client.post(
            "/v1/withdrawals",
            json={"amount": 1_000, "currency": "INR", "payout_method_id": str(uuid.uuid4())},
            headers=member.auth,
        )
        assert r.status_code == 422
        assert r.json()["errors"][0]["field"] == "idempotency-key"

    async def test_method_in_cool_down_is_refused(self, client: httpx.AsyncClient, runtime: Runtime) -> None:
        member = await register_member(client)
        await credit_member(runtime, member.id, 5_000)
        r = await client.post(
            "/v1/payout-methods",
            json={"kind": "upi", "upi_id": f"m{uuid.uuid4().hex[:8]}@okhdfc"},
            headers={**member.auth, "Idempotency-Key": str(uuid.uuid4())},
        )
        method = r.json()

        r = await request_withdrawal(client, member, method["id"], 1_000)

        assert r.status_code == 409
        assert r.json()["code"] == "payout_method_cooling_down"
        assert r.json()["usable_from"] == method["usable_from"].replace("Z", "+00:00")
        assert await withdrawal_count(runtime, member.id) == 0
        assert await balance(runtime, member.id) == ledger.MemberBalance("INR", 0, 5_000, 0)

    async def test_another_members_method_and_unknown_currency_are_refused(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        a, b = await register_member(client), await register_member(client)
        await credit_member(runtime, a.id, 5_000)
        b_method = await usable_method(client, runtime, b)
        a_method = await usable_method(client, runtime, a)

        r = await request_withdrawal(client, a, b_method, 1_000)
        assert r.status_code == 404
        r = await request_withdrawal(client, a, a_method, 1_000, currency="XXZ")
        assert (r.status_code, r.json()["code"]) == (422, "unknown_currency")
        r = await request_withdrawal(client, a, a_method, 50)  # the default minimum is 100
        assert (r.status_code, r.json()["code"]) == (422, "withdrawal_below_minimum")
        assert await withdrawal_count(runtime, a.id) == 0
        assert await balance(runtime, a.id) == ledger.MemberBalance("INR", 0, 5_000, 0)


@pytest.fixture
async def strict_app(app_factory: Callable[..., FastAPI]) -> FastAPI:
    policy = WithdrawalPolicy(
        min_amount=100,
        max_amount=5_000,
        daily_max_amount=8_000,
        monthly_max_amount=50_000,
        kyc_required_above=3_000,
        auto_approve_below=0,
    )
    return app_factory(
        withdrawal_policy=policy,
        withdrawal_policy_by_currency={
            "USD": policy.model_copy(update={"daily_max_amount": 20_000, "monthly_max_amount": 1_500})
        },
    )


@pytest.fixture
async def strict(strict_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(strict_app) as c:
        yield c


class TestLimits:
    async def test_maximum_kyc_gate_and_daily_limit(
        self, strict: httpx.AsyncClient, strict_app: FastAPI
    ) -> None:
        rt: Runtime = strict_app.state.runtime
        member = await register_member(strict)
        await credit_member(rt, member.id, 100_000)
        method_id = await usable_method(strict, rt, member)

        async def refused(amount: int, status: int, code: str) -> dict[str, Any]:
            before = await balance(rt, member.id)
            count = await withdrawal_count(rt, member.id)
            r = await request_withdrawal(strict, member, method_id, amount)
            assert (r.status_code, r.json()["code"]) == (status, code), r.text
            assert await balance(rt, member.id) == before
            assert await withdrawal_count(rt, member.id) == count
            body: dict[str, Any] = r.json()
            return body

        assert (await refused(6_000, 422, "withdrawal_above_maximum"))["max_amount"] == 5_000
        gate = await refused(3_500, 403, "kyc_required")
        assert gate["kyc_status"] == "none"

        staff = await create_staff(strict, rt, role=Role.finance)
        r = await strict.put(
            f"/v1/staff/members/{member.id}/kyc-status", json={"kyc_status": "verified"}, headers=staff.auth
        )
        assert r.status_code == 200, r.text
        first = await request_withdrawal(strict, member, method_id, 3_500)
        assert first.status_code == 201 and first.json()["state"] == "requested"  # no auto-approval here
        assert (await request_withdrawal(strict, member, method_id, 4_000)).status_code == 201

        daily = await refused(600, 422, "daily_withdrawal_limit")
        assert (daily["limit"], daily["remaining"]) == (8_000, 500)
        # A cancelled withdrawal no longer counts.
        r = await strict.post(f"/v1/withdrawals/{first.json()['id']}/cancel", headers=member.auth)
        assert r.status_code == 200
        assert (await request_withdrawal(strict, member, method_id, 600)).status_code == 201
        await assert_reconciles(rt)

    async def test_requests_at_once_cannot_pass_the_daily_limit_together(
        self, strict: httpx.AsyncClient, strict_app: FastAPI
    ) -> None:
        """The member's requests run one at a time (the lock taken with the Idempotency-Key), so each
        sees what the ones before it committed: 8,000 a day in 1,000s is eight, however many race."""
        rt: Runtime = strict_app.state.runtime
        member = await register_member(strict)
        await credit_member(rt, member.id, 100_000)
        method_id = await usable_method(strict, rt, member)

        responses = await asyncio.gather(
            *(request_withdrawal(strict, member, method_id, 1_000) for _ in range(20))
        )

        outcomes = Counter(r.json().get("code", r.status_code) for r in responses)
        assert outcomes == {201: 8, "daily_withdrawal_limit": 12}, outcomes
        assert await withdrawal_count(rt, member.id) == 8
        assert await balance(rt, member.id) == ledger.MemberBalance("INR", 0, 92_000, 8_000)
        await assert_reconciles(rt)

    async def test_monthly_limit_per_currency(self, strict: httpx.AsyncClient, strict_app: FastAPI) -> None:
        rt: Runtime = strict_app.state.runtime
        member = await register_member(strict)
        await credit_member(rt, member.id, 10_000, "USD")
        await credit_member(rt, member.id, 10_000, "INR")
        method_id = await usable_method(strict, rt, member)

        assert (await request_withdrawal(strict, member, method_id, 1_000, "USD")).status_code == 201
        r = await request_withdrawal(strict, member, method_id, 600, "USD")
        assert (r.status_code, r.json()["code"], r.json()["remaining"]) == (
            422,
            "monthly_withdrawal_limit",
            500,
        )
        # INR has its own policy: USD withdrawals are not converted into it.
        assert (await request_withdrawal(strict, member, method_id, 1_500, "INR")).status_code == 201
        assert await balance(rt, member.id, "USD") == ledger.MemberBalance("USD", 0, 9_000, 1_000)

    async def test_a_retry_must_fit_the_limits_again_unless_staff_override_them(
        self, strict: httpx.AsyncClient, strict_app: FastAPI
    ) -> None:
        rt: Runtime = strict_app.state.runtime
        finance = await create_staff(strict, rt, role=Role.finance)
        member = await register_member(strict)
        await credit_member(rt, member.id, 100_000)
        method_id = await usable_method(strict, rt, member)

        def staff_headers() -> dict[str, str]:
            return {**finance.auth, "Idempotency-Key": str(uuid.uuid4())}

        first = (await request_withdrawal(strict, member, method_id, 3_000)).json()
        await strict.post(f"/v1/staff/withdrawals/{first['id']}/approve", headers=staff_headers())
        await run_submissions(rt, first["id"])
        r = await strict.post(
            f"/v1/staff/withdrawals/{first['id']}/mark-failed",
            json={"reason": "The bank returned it."},
            headers=staff_headers(),
        )
        assert r.json()["state"] == "failed"
        # The failed one stopped counting; the member used the room since (6,000 of 8,000 today).
        for _ in range(2):
            assert (await request_withdrawal(strict, member, method_id, 3_000)).status_code == 201

        r = await strict.post(f"/v1/staff/withdrawals/{first['id']}/retry", headers=staff_headers())
        assert (r.status_code, r.json()["code"]) == (422, "daily_withdrawal_limit"), r.text
        assert await balance(rt, member.id) == ledger.MemberBalance("INR", 0, 94_000, 6_000)

        r = await strict.post(
            f"/v1/staff/withdrawals/{first['id']}/retry",
            json={"override_limits": True},
            headers=staff_headers(),
        )
        assert r.status_code == 200 and r.json()["state"] == "approved", r.text
        assert await balance(rt, member.id) == ledger.MemberBalance("INR", 0, 91_000, 9_000)
        [details] = [
            row["after"]
            for row in await db_rows(
                rt,
                "SELECT after FROM audit_log WHERE target_id = :w AND action = 'withdrawal.approved'"
                " ORDER BY created_at DESC, id DESC LIMIT 1",
                w=first["id"],
            )
        ]
        assert details.get("limits_overridden") is True, details


class TestStateMachine:
    async def test_member_cancels_and_gets_the_amount_back(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        member = await register_member(client)
        await credit_member(runtime, member.id, 5_000)
        method_id = await usable_method(client, runtime, member)
        w = (await request_withdrawal(client, member, method_id, 2_000)).json()

        r = await client.post(
            f"/v1/withdrawals/{w['id']}/cancel", json={"reason": "changed my mind"}, headers=member.auth
        )

        assert r.status_code == 200, r.text
        assert (r.json()["state"], r.json()["reason"]) == ("cancelled", "changed my mind")
        assert await balance(runtime, member.id) == ledger.MemberBalance("INR", 0, 5_000, 0)
        again = await client.post(f"/v1/withdrawals/{w['id']}/cancel", headers=member.auth)
        assert (again.status_code, again.json()) == (200, r.json())
        assert await events_of(runtime, w["id"]) == ["requested", "approved", "cancelled"]
        assert await ledger_entries(runtime, w["id"]) == ["withdrawal.hold", "pending.release"]
        await assert_reconciles(runtime)

    async def test_manual_payout_from_request_to_paid(
        self, client: httpx.AsyncClient, runtime: Runtime, finance: Staff
    ) -> None:
        member = await register_member(client)
        await credit_member(runtime, member.id, 1_000_000)
        method_id = await usable_method(client, runtime, member)
        r = await request_withdrawal(client, member, method_id, 600_000)  # above auto-approval
        w = r.json()
        assert w["state"] == "requested"

        r = await client.get(
            "/v1/staff/withdrawals",
            params={"state": "requested", "member_id": member.id},
            headers=finance.auth,
        )
        assert [x["id"] for x in r.json()["items"]] == [w["id"]]
        r = await client.post(f"/v1/staff/withdrawals/{w['id']}/approve", headers=finance.auth)
        assert (r.status_code, r.json()["state"], r.json()["approved_by"]) == (200, "approved", finance.id)

        assert await run_submissions(runtime, w["id"]) == 1
        r = await client.get(f"/v1/staff/withdrawals/{w['id']}", headers=finance.auth)
        assert (r.json()["state"], r.json()["provider"], r.json()["provider_status"]) == (
            "processing",
            "manual",
            "pending",
        )
        cancel = await client.post(f"/v1/withdrawals/{w['id']}/cancel", headers=member.auth)
        assert cancel.status_code == 409
        assert cancel.json()["allowed"] == ["failed", "paid"]

        r = await client.post(
            f"/v1/staff/withdrawals/{w['id']}/mark-paid",
            json={"reference": "HDFCN52025112512"},
            headers=finance.auth,
        )
        assert r.status_code == 200, r.text
        assert (r.json()["state"], r.json()["bank_reference"]) == ("paid", "HDFCN52025112512")
        mine = (await client.get(f"/v1/withdrawals/{w['id']}", headers=member.auth)).json()
        assert (mine["state"], mine["bank_reference"]) == ("paid", "HDFCN52025112512")
        assert await balance(runtime, member.id) == ledger.MemberBalance("INR", 0, 400_000, 0)
        assert await ledger_entries(runtime, w["id"]) == ["withdrawal.hold", "withdrawal.paid"]
        assert await events_of(runtime, w["id"]) == ["requested", "approved", "processing", "paid"]
        assert await audit_actions(runtime, w["id"]) == [
            "withdrawal.requested",
            "withdrawal.approved",
            "withdrawal.processing",
            "withdrawal.paid",
        ]
        # Marking it paid again: the same reference is the same answer, another one is a conflict.
        same = await client.post(
            f"/v1/staff/withdrawals/{w['id']}/mark-paid",
            json={"reference": "HDFCN52025112512"},
            headers=finance.auth,
        )
        assert same.status_code == 200
        other = await client.post(
            f"/v1/staff/withdrawals/{w['id']}/mark-paid",
            json={"reference": "HDFCN99999999999"},
            headers=finance.auth,
        )
        assert (other.status_code, other.json()["code"]) == (409, "withdrawal_paid_with_other_reference")
        assert await balance(runtime, member.id) == ledger.MemberBalance("INR", 0, 400_000, 0)
        await assert_reconciles(runtime)

    async def test_reject_releases_and_final_states_allow_nothing(
        self, client: httpx.AsyncClient, runtime: Runtime, finance: Staff
    ) -> None:
        member = await register_member(client)
        await credit_member(runtime, member.id, 800_000)
        method_id = await usable_method(client, runtime, member)
        w = (await request_withdrawal(client, member, method_id, 700_000)).json()

        r = await client.post(
            f"/v1/staff/withdrawals/{w['id']}/reject",
            json={"reason": "name does not match"},
            headers=finance.auth,
        )

        assert (r.status_code, r.json()["state"]) == (200, "rejected")
        assert (await client.get(f"/v1/withdrawals/{w['id']}", headers=member.auth)).json()["reason"] == (
            "name does not match"
        )
        assert await balance(runtime, member.id) == ledger.MemberBalance("INR", 0, 800_000, 0)
        r = await client.post(f"/v1/staff/withdrawals/{w['id']}/approve", headers=finance.auth)
        assert r.status_code == 409
        assert r.json()["code"] == "withdrawal_state_conflict"
        assert r.json()["allowed"] == []
        assert "rejected cannot become approved" in r.json()["detail"]
        assert await balance(runtime, member.id) == ledger.MemberBalance("INR", 0, 800_000, 0)
        await assert_reconciles(runtime)

    async def test_failed_manual_payout_is_released_then_retried_with_a_new_attempt(
        self, client: httpx.AsyncClient, runtime: Runtime, finance: Staff
    ) -> None:
        member = await register_member(client)
        await credit_member(runtime, member.id, 3_000)
        method_id = await usable_method(client, runtime, member)
        w = (await request_withdrawal(client, member, method_id, 3_000)).json()
        await run_submissions(runtime, w["id"])
        first_id = (await client.get(f"/v1/staff/withdrawals/{w['id']}", headers=finance.auth)).json()[
            "provider_payout_id"
        ]

        r = await client.post(
            f"/v1/staff/withdrawals/{w['id']}/mark-failed",
            json={"reason": "account closed"},
            headers=finance.auth,
        )
        assert (r.status_code, r.json()["state"], r.json()["failure_message"]) == (
            200,
            "failed",
            "account closed",
        )
        assert await balance(runtime, member.id) == ledger.MemberBalance("INR", 0, 3_000, 0)

        key = str(uuid.uuid4())
        r = await client.post(
            f"/v1/staff/withdrawals/{w['id']}/retry", headers={**finance.auth, "Idempotency-Key": key}
        )
        assert r.status_code == 200, r.text
        assert (r.json()["state"], r.json()["attempt"], r.json()["provider_payout_id"]) == (
            "approved",
            2,
            None,
        )
        assert await balance(runtime, member.id) == ledger.MemberBalance("INR", 0, 0, 3_000)
        replay = await client.post(
            f"/v1/staff/withdrawals/{w['id']}/retry", headers={**finance.auth, "Idempotency-Key": key}
        )
        assert (replay.status_code, replay.json()) == (200, r.json())  # not a third attempt

        await run_submissions(runtime, w["id"])
        detail = (await client.get(f"/v1/staff/withdrawals/{w['id']}", headers=finance.auth)).json()
        assert detail["state"] == "processing"
        assert detail["provider_payout_id"] not in (None, first_id)
        r = await client.post(
            f"/v1/staff/withdrawals/{w['id']}/mark-paid",
            json={"reference": "UPI123456789012"},
            headers=finance.auth,
        )
        assert r.json()["state"] == "paid"
        assert await balance(runtime, member.id) == ledger.MemberBalance("INR", 0, 0, 0)
        assert await ledger_entries(runtime, w["id"]) == [
            "withdrawal.hold",
            "pending.release",
            "withdrawal.hold",
            "withdrawal.paid",
        ]
        # Retrying a paid withdrawal is not a thing.
        r = await client.post(
            f"/v1/staff/withdrawals/{w['id']}/retry",
            headers={**finance.auth, "Idempotency-Key": str(uuid.uuid4())},
        )
        assert (r.status_code, r.json()["allowed"]) == (409, ["reversed"])
        await assert_reconciles(runtime)

    async def test_staff_routes_need_the_finance_role(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        member = await register_member(client)
        support = await create_staff(client, runtime, role=Role.support)
        for who in (member, support):
            r = await client.get("/v1/staff/withdrawals", headers=who.auth)
            assert r.status_code == 403


async def test_fees_are_their_own_postings(app_factory: Callable[..., FastAPI]) -> None:
    app = app_factory(withdrawal_policy=WithdrawalPolicy(fee_fixed=100, fee_bps=100))  # 1.00 + 1 %
    rt: Runtime = app.state.runtime
    async with asgi_client(app) as client:
        member = await register_member(client)
        finance = await create_staff(client, rt, role=Role.finance)
        await credit_member(rt, member.id, 20_000)
        method_id = await usable_method(client, rt, member)
        async with rt.db.sessionmaker() as session:
            fees_before = await ledger.platform_balance(
                session, ledger.AccountCode.fees, "INR", "withdrawals"
            )
            settled_before = await ledger.platform_balance(
                session, ledger.AccountCode.settlement, "INR", "manual"
            )

        w = (await request_withdrawal(client, member, method_id, 10_000)).json()
        assert (w["fee"]["amount"], w["payout_amount"]["amount"]) == (200, 9_800)
        await run_submissions(rt, w["id"])
        r = await client.post(
            f"/v1/staff/withdrawals/{w['id']}/mark-paid",
            json={"reference": "NEFT0000123"},
            headers=finance.auth,
        )
        assert r.json()["state"] == "paid"

    assert await balance(rt, member.id) == ledger.MemberBalance("INR", 0, 10_000, 0)
    async with rt.db.sessionmaker() as session:
        assert (
            await ledger.platform_balance(session, ledger.AccountCode.fees, "INR", "withdrawals")
            == fees_before + 200
        )
        assert (
            await ledger.platform_balance(session, ledger.AccountCode.settlement, "INR", "manual")
            == settled_before + 9_800
        )
    assert await ledger_entries(rt, w["id"]) == ["withdrawal.hold", "withdrawal.paid", "withdrawal.settled"]
    await assert_reconciles(rt)


async def test_member_a_cannot_see_or_act_on_member_bs_withdrawals(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    a, b = await register_member(client), await register_member(client)
    await credit_member(runtime, b.id, 5_000)
    method_id = await usable_method(client, runtime, b)
    w = (await request_withdrawal(client, b, method_id, 1_000)).json()

    assert (await client.get(f"/v1/withdrawals/{w['id']}", headers=a.auth)).status_code == 404
    r = await client.post(f"/v1/withdrawals/{w['id']}/cancel", headers=a.auth)
    assert (r.status_code, r.json()["code"]) == (404, "withdrawal_not_found")
    assert (await client.get("/v1/withdrawals", headers=a.auth)).json()["items"] == []
    dispute = {
        "subject_type": "withdrawal",
        "subject_id": w["id"],
        "title": "Not received",
        "message": "Where?",
    }
    r = await client.post(
        "/v1/disputes", json=dispute, headers={**a.auth, "Idempotency-Key": str(uuid.uuid4())}
    )
    assert r.status_code == 404
    # B still has it, untouched, and may dispute it.
    assert (await client.get(f"/v1/withdrawals/{w['id']}", headers=b.auth)).json()["state"] == "approved"
    assert await balance(runtime, b.id) == ledger.MemberBalance("INR", 0, 4_000, 1_000)
    r = await client.post(
        "/v1/disputes", json=dispute, headers={**b.auth, "Idempotency-Key": str(uuid.uuid4())}
    )
    assert r.status_code == 201, r.text


async def test_list_is_paginated_and_filtered(client: httpx.AsyncClient, runtime: Runtime) -> None:
    member = await register_member(client)
    await credit_member(runtime, member.id, 10_000)
    method_id = await usable_method(client, runtime, member)
    ids = [(await request_withdrawal(client, member, method_id, 1_000)).json()["id"] for _ in range(3)]
    await client.post(f"/v1/withdrawals/{ids[0]}/cancel", headers=member.auth)

    page = (await client.get("/v1/withdrawals", params={"limit": 2}, headers=member.auth)).json()
    assert [w["id"] for w in page["items"]] == [ids[2], ids[1]]
    rest = (
        await client.get(
            "/v1/withdrawals", params={"limit": 2, "cursor": page["next_cursor"]}, headers=member.auth
        )
    ).json()
    assert ([w["id"] for w in rest["items"]], rest["next_cursor"]) == ([ids[0]], None)
    cancelled = (
        await client.get("/v1/withdrawals", params={"state": "cancelled"}, headers=member.auth)
    ).json()
    assert [w["id"] for w in cancelled["items"]] == [ids[0]]
    later = (
        await client.get(
            "/v1/withdrawals", params={"created_from": "2999-01-01T00:00:00Z"}, headers=member.auth
        )
    ).json()
    assert later["items"] == []
