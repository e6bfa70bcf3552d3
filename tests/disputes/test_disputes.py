import asyncio
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
    assert actions == [
        "dispute.opened",
        "dispute.assigned",
        "dispute.replied",
        "dispute.member_replied",
        "dispute.resolved",
    ]


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


async def _fill_thread(runtime, dispute_id: str, member_id: str, count: int) -> None:
    """`count` earlier member messages, written straight to the table (an hour ago, a second apart)."""
    await db_rows(
        runtime,
        "INSERT INTO dispute_messages (id, dispute_id, member_id, author_id, author_role, body, internal,"
        " created_at)"
        " SELECT gen_random_uuid(), :d, :m, :m, 'member', 'earlier message ' || n, false,"
        " now() - interval '1 hour' + n * interval '1 second' FROM generate_series(1, :count) AS n",
        d=dispute_id,
        m=member_id,
        count=count,
    )


async def test_on_a_long_thread_the_newest_messages_and_the_resolution_are_shown(client, runtime):
    member = await register_member(client)
    support = await create_staff(client, runtime, role=Role.support)
    dispute = await open_dispute(client, member)
    await _fill_thread(runtime, dispute["id"], member.id, 600)
    reply = await client.post(
        f"/v1/staff/disputes/{dispute['id']}/messages",
        json={"body": "We are looking into it."},
        headers={**support.auth, **key()},
    )
    assert reply.status_code == 201
    done = await client.post(
        f"/v1/staff/disputes/{dispute['id']}/resolve",
        json={"outcome": "rejected", "note": "Resolved after review."},
        headers={**support.auth, **key()},
    )
    assert done.status_code == 200, done.text

    seen = (await client.get(f"/v1/disputes/{dispute['id']}", headers=member.auth)).json()
    bodies = [m["body"] for m in seen["messages"]]
    assert len(bodies) == 500
    assert bodies[-2:] == ["We are looking into it.", "Resolved after review."]
    # Oldest first within the window; the opening message is the newest member message here.
    assert bodies[-4:-2] == ["earlier message 600", OTHER["message"]]
    assert bodies[0] == "earlier message 104"
    assert seen["messages"][-1]["from_staff"] is True
    staff_view = (await client.get(f"/v1/staff/disputes/{dispute['id']}", headers=support.auth)).json()
    assert staff_view["messages"][-1]["body"] == "Resolved after review."
    assert staff_view["last_message_at"] == staff_view["resolved_at"]


async def test_a_member_cannot_write_more_than_200_messages_in_one_dispute(client, runtime):
    member = await register_member(client)
    support = await create_staff(client, runtime, role=Role.support)
    dispute = await open_dispute(client, member)
    await _fill_thread(runtime, dispute["id"], member.id, 199)  # 200 with the opening message
    r = await client.post(
        f"/v1/disputes/{dispute['id']}/messages", json={"body": "One more"}, headers={**member.auth, **key()}
    )
    assert r.status_code == 409
    assert r.json()["code"] == "dispute_thread_full"
    assert (
        await db_value(
            runtime,
            "SELECT count(*) FROM dispute_messages WHERE body = 'One more' AND dispute_id = :d",
            d=dispute["id"],
        )
        == 0
    )
    # Support can still answer and resolve.
    reply = await client.post(
        f"/v1/staff/disputes/{dispute['id']}/messages",
        json={"body": "Answer"},
        headers={**support.auth, **key()},
    )
    assert reply.status_code == 201


async def test_the_open_dispute_limit_holds_under_concurrent_requests(client, runtime):
    member = await register_member(client)
    for _ in range(19):
        await open_dispute(client, member)
    # Warm the connection pool, so that the ten requests below reach the database together.
    other = await register_member(client)
    await asyncio.gather(*(open_dispute(client, other) for _ in range(10)))
    results = await asyncio.gather(
        *(client.post("/v1/disputes", json=OTHER, headers={**member.auth, **key()}) for _ in range(10))
    )
    statuses = sorted(r.status_code for r in results)
    assert statuses == [201] + [409] * 9, [r.text for r in results]
    assert {r.json()["code"] for r in results if r.status_code == 409} == {"too_many_open_disputes"}
    assert (
        await db_value(
            runtime, "SELECT count(*) FROM disputes WHERE member_id = :m AND state <> 'resolved'", m=member.id
        )
        == 20
    )


async def test_a_member_answering_support_reopens_the_dispute_with_an_audit_row(client, runtime):
    member = await register_member(client)
    support = await create_staff(client, runtime, role=Role.support)
    dispute = await open_dispute(client, member)
    await client.post(
        f"/v1/staff/disputes/{dispute['id']}/messages",
        json={"body": "Which program?"},
        headers={**support.auth, **key()},
    )
    r = await client.post(
        f"/v1/disputes/{dispute['id']}/messages", json={"body": "MBA."}, headers={**member.auth, **key()}
    )
    assert r.status_code == 201
    # A second message while the dispute is already open changes no state: no second row.
    r = await client.post(
        f"/v1/disputes/{dispute['id']}/messages",
        json={"body": "Spring intake."},
        headers={**member.auth, **key()},
    )
    assert r.status_code == 201
    rows = await db_rows(
        runtime,
        "SELECT actor_id, before, after FROM audit_log WHERE target_id = :id AND action = 'dispute.member_replied'",
        id=dispute["id"],
    )
    assert len(rows) == 1
    assert str(rows[0]["actor_id"]) == member.id
    assert rows[0]["before"]["state"] == "awaiting_member" and rows[0]["after"]["state"] == "open"
    topics = await db_rows(
        runtime,
        "SELECT topic FROM outbox_events WHERE topic = 'disputes.member_replied' AND payload->>'dispute_id' = :id",
        id=dispute["id"],
    )
    assert len(topics) == 1


async def test_resolving_moves_last_message_at_to_the_resolution_note(client, runtime):
    member = await register_member(client)
    support = await create_staff(client, runtime, role=Role.support)
    dispute = await open_dispute(client, member)
    done = await client.post(
        f"/v1/staff/disputes/{dispute['id']}/resolve",
        json={"outcome": "rejected", "note": "Nothing to change."},
        headers={**support.auth, **key()},
    )
    assert done.status_code == 200
    seen = (await client.get(f"/v1/disputes/{dispute['id']}", headers=member.auth)).json()
    assert seen["messages"][-1]["body"] == "Nothing to change."
    assert seen["last_message_at"] == seen["messages"][-1]["created_at"]
    assert seen["last_message_at"] > dispute["last_message_at"]
