import uuid

from referloop.identity.models import Role
from tests.factories import create_staff, db_rows, db_value, register_member


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


OTHER = {"subject_type": "other", "title": "Where is my reward?", "message": "My friend enrolled last month."}


async def open_dispute(client, member, body=OTHER):
    r = await client.post("/v1/disputes", json=body, headers={**member.auth, **key()})
    assert r.status_code == 201, r.text
    return r.json()


async def test_member_opens_a_dispute_and_support_answers_then_resolves(client, runtime):
    member = await register_member(client)
    support = await create_staff(client, runtime, role=Role.support)
    dispute = await open_dispute(client, member)
    assert dispute["state"] == "open"
    assert dispute["first_response_at"] is None
    assert [m["body"] for m in dispute["messages"]] == [OTHER["message"]]

    listed = await client.get("/v1/staff/disputes", params={"member_id": member.id}, headers=support.auth)
    assert [d["id"] for d in listed.json()["items"]] == [dispute["id"]]

    r = await client.put(
        f"/v1/staff/disputes/{dispute['id']}/assignee", json={"assignee_id": support.id}, headers=support.auth
    )
    assert r.json()["assignee_id"] == support.id

    note = await client.post(
        f"/v1/staff/disputes/{dispute['id']}/messages",
        json={"body": "Looks like a duplicate account.", "internal": True},
        headers={**support.auth, **key()},
    )
    assert note.status_code == 201
    reply = await client.post(
        f"/v1/staff/disputes/{dispute['id']}/messages",
        json={"body": "Which program did they enrol in?"},
        headers={**support.auth, **key()},
    )
    assert reply.status_code == 201

    seen = (await client.get(f"/v1/disputes/{dispute['id']}", headers=member.auth)).json()
    assert seen["state"] == "awaiting_member"
    assert seen["first_response_at"] is not None
    assert [m["body"] for m in seen["messages"]] == [OTHER["message"], "Which program did they enrol in?"]

    r = await client.post(
        f"/v1/disputes/{dispute['id']}/messages",
        json={"body": "MBA, Spring intake."},
        headers={**member.auth, **key()},
    )
    assert r.status_code == 201
    assert (await client.get(f"/v1/disputes/{dispute['id']}", headers=member.auth)).json()["state"] == "open"

    done = await client.post(
        f"/v1/staff/disputes/{dispute['id']}/resolve",
        json={"outcome": "rejected", "note": "The enrolment was before your invitation."},
        headers={**support.auth, **key()},
    )
    assert done.status_code == 200, done.text
    assert done.json()["state"] == "resolved"
    assert done.json()["outcome"] == "rejected"

    closed = await client.post(
        f"/v1/disputes/{dispute['id']}/messages", json={"body": "But..."}, headers={**member.auth, **key()}
    )
    assert closed.status_code == 409
    again = await client.post(
        f"/v1/staff/disputes/{dispute['id']}/resolve",
        json={"outcome": "upheld", "note": "changed my mind"},
        headers={**support.auth, **key()},
    )
    assert again.status_code == 409
    assert (
        await db_value(runtime, "SELECT outcome FROM disputes WHERE id = :id", id=dispute["id"]) == "rejected"
    )
    actions = [
        r["action"]
        for r in await db_rows(
            runtime,
            "SELECT action FROM audit_log WHERE target_id = :id ORDER BY created_at, id",
            id=dispute["id"],
        )
    ]
    assert actions == ["dispute.opened", "dispute.assigned", "dispute.replied", "dispute.resolved"]


async def test_member_cannot_see_or_touch_another_members_dispute(client):
    a = await register_member(client)
    b = await register_member(client)
    dispute = await open_dispute(client, a)
    assert (await client.get(f"/v1/disputes/{dispute['id']}", headers=b.auth)).status_code == 404
    r = await client.post(
        f"/v1/disputes/{dispute['id']}/messages", json={"body": "hi"}, headers={**b.auth, **key()}
    )
    assert r.status_code == 404
    assert (await client.post(f"/v1/disputes/{dispute['id']}/withdraw", headers=b.auth)).status_code == 404
    assert (await client.get("/v1/disputes", headers=b.auth)).json()["items"] == []
    assert (await client.get(f"/v1/disputes/{dispute['id']}", headers=a.auth)).json()["state"] == "open"


async def test_a_member_cannot_reach_staff_dispute_routes(client):
    member = await register_member(client)
    dispute = await open_dispute(client, member)
    assert (await client.get("/v1/staff/disputes", headers=member.auth)).status_code == 403
    r = await client.post(
        f"/v1/staff/disputes/{dispute['id']}/resolve",
        json={"outcome": "upheld", "note": "me"},
        headers={**member.auth, **key()},
    )
    assert r.status_code == 403


async def test_disputing_a_subject_the_member_does_not_own_is_refused(client, runtime):
    member = await register_member(client)
    body = {"subject_type": "withdrawal", "subject_id": str(uuid.uuid4()), "title": "Missing", "message": "?"}
    r = await client.post("/v1/disputes", json=body, headers={**member.auth, **key()})
    assert r.status_code == 404
    assert r.json()["code"] == "dispute_subject_not_found"
    missing_id = {"subject_type": "withdrawal", "title": "Missing", "message": "?"}
    assert (
        await client.post("/v1/disputes", json=missing_id, headers={**member.auth, **key()})
    ).status_code == 422
    assert await db_value(runtime, "SELECT count(*) FROM disputes WHERE member_id = :m", m=member.id) == 0


async def test_amount_adjustments_need_the_finance_role(client, runtime):
    member = await register_member(client)
    support = await create_staff(client, runtime, role=Role.support)
    dispute = await open_dispute(client, member)
    r = await client.post(
        f"/v1/staff/disputes/{dispute['id']}/resolve",
        json={"outcome": "upheld", "note": "Sorry!", "adjustment": {"amount": 5000, "currency": "INR"}},
        headers={**support.auth, **key()},
    )
    assert r.status_code == 403
    assert await db_value(runtime, "SELECT state FROM disputes WHERE id = :id", id=dispute["id"]) == "open"


async def test_overdue_filter_and_withdrawal_by_the_member(client, runtime):
    member = await register_member(client)
    support = await create_staff(client, runtime, role=Role.support)
    late = await open_dispute(client, member)
    fresh = await open_dispute(client, member)
    await db_rows(
        runtime,
        "UPDATE disputes SET first_response_due_at = now() - interval '1 hour' WHERE id = :id",
        id=late["id"],
    )
    r = await client.get(
        "/v1/staff/disputes", params={"member_id": member.id, "overdue": "true"}, headers=support.auth
    )
    assert [(d["id"], d["overdue"]) for d in r.json()["items"]] == [(late["id"], True)]

    w = await client.post(f"/v1/disputes/{fresh['id']}/withdraw", headers=member.auth)
    assert w.json()["outcome"] == "withdrawn"
    states = await client.get("/v1/disputes", params={"state": "resolved"}, headers=member.auth)
    assert [d["id"] for d in states.json()["items"]] == [fresh["id"]]


async def test_dispute_list_is_cursor_paginated(client):
    member = await register_member(client)
    ids = [(await open_dispute(client, member))["id"] for _ in range(5)]
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/disputes", params=params, headers=member.auth)).json()
        seen += [d["id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))


async def test_finance_resolution_posts_one_adjustment_to_the_wallet(client, runtime):
    from referloop import ledger

    member = await register_member(client)
    finance = await create_staff(client, runtime, role=Role.finance)
    dispute = await open_dispute(client, member)
    body = {
        "outcome": "upheld",
        "note": "Reward was missed.",
        "adjustment": {"amount": 2500, "currency": "INR"},
    }
    r = await client.post(
        f"/v1/staff/disputes/{dispute['id']}/resolve", json=body, headers={**finance.auth, **key()}
    )
    assert r.status_code == 200, r.text
    assert r.json()["adjustment"] == {"amount": 2500, "currency": "INR"}
    again = await client.post(
        f"/v1/staff/disputes/{dispute['id']}/resolve", json=body, headers={**finance.auth, **key()}
    )
    assert again.status_code == 409
    wallet = (await client.get("/v1/wallet", headers=member.auth)).json()["balances"]
    assert wallet == [
        {"currency": "INR", "exponent": 2, "pending": 0, "available": 2500, "held": 0, "total": 2500}
    ]
    async with runtime.db.sessionmaker() as s:
        assert (await ledger.reconcile(s)).ok


async def test_a_debit_adjustment_never_takes_the_balance_below_zero(client, runtime):
    member = await register_member(client)
    finance = await create_staff(client, runtime, role=Role.finance)
    dispute = await open_dispute(client, member)
    body = {
        "outcome": "partially_upheld",
        "note": "Clawback.",
        "adjustment": {"amount": -100, "currency": "INR"},
    }
    r = await client.post(
        f"/v1/staff/disputes/{dispute['id']}/resolve", json=body, headers={**finance.auth, **key()}
    )
    assert r.status_code == 409
    assert await db_value(runtime, "SELECT state FROM disputes WHERE id = :id", id=dispute["id"]) == "open"
    assert (await client.get("/v1/wallet", headers=member.auth)).json()["balances"] in (
        [],
        [{"currency": "INR", "exponent": 2, "pending": 0, "available": 0, "held": 0, "total": 0}],
    )


async def test_a_retried_message_or_resolution_happens_once(client, runtime):
    member = await register_member(client)
    finance = await create_staff(client, runtime, role=Role.finance)
    dispute = await open_dispute(client, member)
    headers = {**member.auth, **key()}
    first = await client.post(
        f"/v1/disputes/{dispute['id']}/messages", json={"body": "Any news?"}, headers=headers
    )
    retry = await client.post(
        f"/v1/disputes/{dispute['id']}/messages", json={"body": "Any news?"}, headers=headers
    )
    assert first.status_code == retry.status_code == 201
    assert retry.json() == first.json() and retry.headers["idempotent-replayed"] == "true"
    assert (
        await client.post(f"/v1/disputes/{dispute['id']}/messages", json={"body": "x"}, headers=member.auth)
    ).status_code in (400, 422)
    seen = (await client.get(f"/v1/disputes/{dispute['id']}", headers=member.auth)).json()
    assert [m["body"] for m in seen["messages"]].count("Any news?") == 1

    body = {"outcome": "upheld", "note": "Missed reward.", "adjustment": {"amount": 1200, "currency": "INR"}}
    staff_headers = {**finance.auth, **key()}
    done = await client.post(f"/v1/staff/disputes/{dispute['id']}/resolve", json=body, headers=staff_headers)
    again = await client.post(f"/v1/staff/disputes/{dispute['id']}/resolve", json=body, headers=staff_headers)
    assert done.status_code == again.status_code == 200 and again.json() == done.json()
    assert (await client.get("/v1/wallet", headers=member.auth)).json()["balances"][0]["available"] == 1200
