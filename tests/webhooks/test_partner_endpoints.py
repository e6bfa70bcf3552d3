"""Partners' own webhook endpoints: scoped to their university (events and management alike)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from standardwebhooks import Webhook

from referloop.runtime import Runtime
from tests.referrals.helpers import Admin, sql
from tests.referrals.partner.helpers import invite, make_partner, new_member, outcome
from tests.webhooks.support import Receiver, deliver, emit, referral_event, relay

PARTNER = "/partner/v1/webhook-endpoints"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_partner_endpoints_see_and_receive_only_their_university(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin, receiver: Receiver
) -> None:
    a = await make_partner(client, admin)
    b = await make_partner(client, admin)
    r = await client.post(PARTNER, json={"url": receiver.url, "description": "CRM"}, headers=auth(a.key))
    assert r.status_code == 201, r.text
    endpoint = r.json()
    assert endpoint["owner_type"] == "partner" and endpoint["university_id"] == a.university_id
    assert endpoint["secret"].startswith("whsec_") and endpoint["contact_email"]

    # B sees none of it and can change none of it.
    r = await client.get(PARTNER, headers=auth(b.key))
    assert r.status_code == 200 and r.json()["items"] == []
    for method, path, body in (
        ("GET", f"{PARTNER}/{endpoint['id']}", None),
        ("PATCH", f"{PARTNER}/{endpoint['id']}", {"enabled": False}),
        ("DELETE", f"{PARTNER}/{endpoint['id']}", None),
        ("GET", f"{PARTNER}/{endpoint['id']}/deliveries", None),
        ("POST", f"{PARTNER}/{endpoint['id']}/rotate-secret", None),
    ):
        r = await client.request(
            method, path, json=body, headers={**auth(b.key), "Idempotency-Key": str(uuid.uuid4())}
        )
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["code"] == "webhook_endpoint_not_found"
    r = await client.get(f"{PARTNER}/{endpoint['id']}", headers=auth(a.key))
    assert r.status_code == 200 and r.json()["enabled"] is True

    # Events of B's university never reach A's endpoint; A's own do.
    await emit(runtime, "referrals.state_changed", referral_event(b.university_id))
    own = await emit(runtime, "referrals.state_changed", referral_event(a.university_id))
    rows = await sql(
        runtime,
        "SELECT message_id FROM webhook_deliveries WHERE endpoint_id = :e",
        e=uuid.UUID(endpoint["id"]),
    )
    assert [r["message_id"] for r in rows] == [own]
    await deliver(runtime)
    (got,) = receiver.got()
    assert (
        Webhook(endpoint["secret"]).verify(got.body, got.headers)["data"]["university_id"] == a.university_id
    )

    # A's delivery log and a manual redelivery.
    r = await client.get(f"{PARTNER}/{endpoint['id']}/deliveries", headers=auth(a.key))
    (delivery,) = r.json()["items"]
    assert delivery["status"] == "succeeded"
    r = await client.post(
        f"{PARTNER}/{endpoint['id']}/deliveries/{delivery['id']}/redeliver", headers=auth(a.key)
    )
    assert r.status_code == 202
    r = await client.post(
        f"{PARTNER}/{endpoint['id']}/deliveries/{delivery['id']}/redeliver", headers=auth(b.key)
    )
    assert r.status_code == 404
    await deliver(runtime)
    assert [g.headers["webhook-id"] for g in receiver.got()] == [f"msg_{own.hex}"] * 2

    # Every partner call is audited under the key.
    actions = await sql(
        runtime,
        "SELECT action FROM audit_log WHERE actor_id = :k ORDER BY created_at, id",
        k=uuid.UUID(a.key_id),
    )
    names = [x["action"] for x in actions]
    assert names[0] == "webhooks.endpoint_created" and "partner.webhook_endpoint_created" in names
    assert "webhooks.delivery_redelivered" in names


async def test_partner_endpoint_input(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin, receiver: Receiver
) -> None:
    a = await make_partner(client, admin)
    other = await make_partner(client, admin)
    for body in (
        {"url": "http://hooks.example.com/x"},
        {"url": receiver.url, "university_id": other.university_id},  # a partner cannot widen its scope
        {"url": receiver.url, "event_types": ["referral.deleted"]},
    ):
        r = await client.post(PARTNER, json=body, headers=auth(a.key))
        assert r.status_code == 422, body
    r = await client.post(
        PARTNER, json={"url": receiver.url, "event_types": ["reward.released"]}, headers=auth(a.key)
    )
    assert r.status_code == 201
    endpoint: dict[str, Any] = r.json()
    r = await client.patch(
        f"{PARTNER}/{endpoint['id']}",
        json={"event_types": [], "description": "all events"},
        headers=auth(a.key),
    )
    assert r.status_code == 200 and r.json()["event_types"] == [] and r.json()["description"] == "all events"
    # Staff see partners' endpoints too.
    r = await client.get(
        "/v1/staff/webhook-endpoints",
        params={"owner_type": "partner", "university_id": a.university_id},
        headers=admin.auth,
    )
    assert [e["id"] for e in r.json()["items"]] == [endpoint["id"]]


async def test_a_fraud_holds_reason_never_reaches_the_partner(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin, receiver: Receiver
) -> None:
    partner = await make_partner(client, admin)
    r = await client.post(PARTNER, json={"url": receiver.url}, headers=auth(partner.key))
    assert r.status_code == 201, r.text
    endpoint = r.json()
    referral = await invite(client, await new_member(client), partner.program_id)
    r = await client.post(
        "/partner/v1/outcomes",
        json={"items": [outcome("application_submitted", referral_id=referral["id"])]},
        headers=partner.headers(),
    )
    assert r.json()["items"][0]["status"] == "applied"
    suspicion = "Same device and bank account as the referrer " + uuid.uuid4().hex
    r = await client.post(
        f"/v1/staff/referrals/{referral['id']}/fraud-hold",
        json={"reason": suspicion},
        headers={**admin.auth, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert r.status_code == 200, r.text
    r = await client.post(
        "/partner/v1/outcomes",
        json={"items": [outcome("enrolled", referral_id=referral["id"])]},
        headers=partner.headers(),
    )
    assert r.status_code == 200, r.text

    assert await relay(runtime, referral["id"]) >= 4
    await deliver(runtime)
    messages = [Webhook(endpoint["secret"]).verify(g.body, g.headers) for g in receiver.got()]
    moves = [(m["data"]["from_state"], m["data"]["to_state"]) for m in messages if "to_state" in m["data"]]
    assert ("applied", "fraud_hold") in moves and ("applied", "enrolled") in moves
    assert not any(suspicion in g.body.decode() for g in receiver.got())
    assert not any("fraud hold" in g.body.decode() for g in receiver.got())  # nor that a move was held
    assert all("reason" not in m["data"] for m in messages)
    # Nor in the delivery log the partner reads.
    r = await client.get(f"{PARTNER}/{endpoint['id']}/deliveries", headers=auth(partner.key))
    for d in r.json()["items"]:
        r = await client.get(f"{PARTNER}/{endpoint['id']}/deliveries/{d['id']}", headers=auth(partner.key))
        assert suspicion not in r.text
