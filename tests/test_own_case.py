"""Staff never decide on their own money or status: approving or paying their own withdrawal,
resolving their own dispute, setting their own KYC status or level is refused (403 own_case) and
changes nothing; another staff member can."""

from __future__ import annotations

import uuid

import httpx

from referloop import ledger
from referloop.identity.models import Role
from referloop.runtime import Runtime
from tests.factories import create_staff
from tests.payouts.test_withdrawals import credit_member
from tests.payouts.test_withdrawals_support import balance, request_withdrawal, run_submissions, usable_method


def idem() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


async def assert_own_case(r: httpx.Response) -> None:
    assert r.status_code == 403, r.text
    assert r.json()["code"] == "own_case"


async def test_staff_cannot_decide_their_own_cases(client: httpx.AsyncClient, runtime: Runtime) -> None:
    finance = await create_staff(client, runtime, role=Role.finance)
    colleague = await create_staff(client, runtime, role=Role.finance)
    admin = await create_staff(client, runtime, role=Role.admin)
    await credit_member(runtime, finance.id, 2_000_000)
    method_id = await usable_method(client, runtime, finance)

    # A withdrawal large enough to need finance approval.
    w = (await request_withdrawal(client, finance, method_id, 1_000_000)).json()
    assert w["state"] == "requested", w
    await assert_own_case(
        await client.post(f"/v1/staff/withdrawals/{w['id']}/approve", headers={**finance.auth, **idem()})
    )
    r = await client.get(f"/v1/staff/withdrawals/{w['id']}", headers=colleague.auth)
    assert r.json()["state"] == "requested"
    r = await client.post(f"/v1/staff/withdrawals/{w['id']}/approve", headers={**colleague.auth, **idem()})
    assert r.status_code == 200 and r.json()["state"] == "approved"
    await run_submissions(runtime, w["id"])  # manual payouts: now processing, for finance to pay by hand
    await assert_own_case(
        await client.post(
            f"/v1/staff/withdrawals/{w['id']}/mark-paid",
            json={"reference": "UTR123456"},
            headers={**finance.auth, **idem()},
        )
    )

    # A dispute of their own, resolved with money to themselves.
    d = await client.post(
        "/v1/disputes",
        json={"subject_type": "other", "title": "Bonus", "message": "Please add 100,000 to my wallet."},
        headers={**finance.auth, **idem()},
    )
    assert d.status_code == 201, d.text
    before = await balance(runtime, finance.id)
    await assert_own_case(
        await client.post(
            f"/v1/staff/disputes/{d.json()['id']}/resolve",
            json={"outcome": "upheld", "note": "ok", "adjustment": {"amount": 100_000, "currency": "INR"}},
            headers={**finance.auth, **idem()},
        )
    )
    assert await balance(runtime, finance.id) == before
    assert before.available == 1_000_000 and isinstance(before, ledger.MemberBalance)
    # Nor do they answer it as support (which would stop its first-response clock), or handle it.
    dispute_id = d.json()["id"]
    await assert_own_case(
        await client.post(
            f"/v1/staff/disputes/{dispute_id}/messages",
            json={"body": "Looks right to me."},
            headers={**finance.auth, **idem()},
        )
    )
    for assigner in (finance, colleague):
        await assert_own_case(
            await client.put(
                f"/v1/staff/disputes/{dispute_id}/assignee",
                json={"assignee_id": finance.id},
                headers=assigner.auth,
            )
        )
    r = await client.get(f"/v1/staff/disputes/{dispute_id}", headers=colleague.auth)
    assert r.json()["first_response_at"] is None and r.json()["assignee_id"] is None
    assert r.json()["state"] == "open"

    # An admin's own KYC status and level; another admin may set them.
    other_admin = await create_staff(client, runtime, role=Role.admin)
    for path, body in (("kyc-status", {"kyc_status": "verified"}), ("level", {"level": 5})):
        await assert_own_case(
            await client.put(f"/v1/staff/members/{admin.id}/{path}", json=body, headers=admin.auth)
        )
        r = await client.put(f"/v1/staff/members/{admin.id}/{path}", json=body, headers=other_admin.auth)
        assert r.status_code == 200, r.text
