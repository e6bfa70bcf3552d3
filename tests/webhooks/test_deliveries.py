"""Outbound webhooks against a real receiver on loopback: Standard Webhooks signatures checked with
the reference library, retries with growing delays (a controlled clock, no sleeping), the delivery
log, manual redelivery, the retry window, and endpoints disabled (with an email) after failing."""

from __future__ import annotations

import contextlib
import itertools
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from referloop.core.db import utcnow
from referloop.notifications.rendering import render_email
from referloop.runtime import Runtime
from tests.factories import latest_message, new_email
from tests.referrals.helpers import Admin, create_program, sql
from tests.webhooks.support import Receiver, deliver, emit, referral_event, reward_event

STAFF = "/v1/staff/webhook-endpoints"


async def operator_endpoint(
    client: httpx.AsyncClient, admin: Admin, url: str, university_id: str, **extra: Any
) -> dict[str, Any]:
    r = await client.post(
        STAFF, json={"url": url, "university_id": university_id, **extra}, headers=admin.auth
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def delivery_row(rt: Runtime, event_id: uuid.UUID, endpoint_id: str) -> dict[str, Any]:
    rows = await sql(
        rt,
        "SELECT id, status, attempts, next_attempt_at, last_status_code FROM webhook_deliveries "
        "WHERE message_id = :m AND endpoint_id = :e",
        m=event_id,
        e=uuid.UUID(endpoint_id),
    )
    assert len(rows) == 1, rows
    return rows[0]


async def test_messages_verify_with_the_standard_webhooks_library(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin, university: dict[str, Any], receiver: Receiver
) -> None:
    endpoint = await operator_endpoint(client, admin, receiver.url, university["id"])
    secret = endpoint["secret"]
    assert secret.startswith("whsec_")

    payload = referral_event(university["id"], to_state="enrolled")
    event_id = await emit(runtime, "referrals.state_changed", payload)
    assert await deliver(runtime) >= 1

    (got,) = receiver.got()
    assert got.headers["webhook-id"] == f"msg_{event_id.hex}"
    assert got.headers["content-type"] == "application/json"
    message = Webhook(secret).verify(got.body, got.headers)
    assert message["type"] == "referral.state_changed"
    assert message["data"]["referral_id"] == payload["referral_id"]
    assert message["data"]["to_state"] == "enrolled"
    assert message["data"]["from_state"] == "signed_up"
    assert "referrer_id" not in message["data"]  # receivers never learn who the referrer is

    # Any change to the body, or another secret, fails verification.
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(got.body.replace(b"enrolled", b"rejected"), got.headers)
    other = await operator_endpoint(client, admin, receiver.url, university["id"])
    with pytest.raises(WebhookVerificationError):
        Webhook(other["secret"]).verify(got.body, got.headers)

    # The secret is never shown again; the delivery log has the attempt.
    r = await client.get(f"{STAFF}/{endpoint['id']}", headers=admin.auth)
    assert r.status_code == 200 and "secret" not in r.json()
    r = await client.get(f"{STAFF}/{endpoint['id']}/deliveries", headers=admin.auth)
    (delivery,) = r.json()["items"]
    assert delivery["status"] == "succeeded" and delivery["attempts"] == 1
    assert (
        delivery["message_id"] == f"msg_{event_id.hex}" and delivery["event_type"] == "referral.state_changed"
    )
    r = await client.get(f"{STAFF}/{endpoint['id']}/deliveries/{delivery['id']}", headers=admin.auth)
    detail = r.json()
    assert detail["payload"] == message
    (attempt,) = detail["attempt_log"]
    assert attempt["status_code"] == 200 and attempt["error"] is None and attempt["latency_ms"] >= 0
    assert attempt["trigger"] == "scheduled"


async def test_failing_receiver_gets_retries_with_growing_delays_then_one_success(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin, university: dict[str, Any], receiver: Receiver
) -> None:
    endpoint = await operator_endpoint(client, admin, receiver.url, university["id"])
    receiver.fail_next(4, status=500)
    event_id = await emit(runtime, "referrals.state_changed", referral_event(university["id"]))

    now = utcnow()
    delays: list[float] = []
    for attempt in range(1, 5):
        await deliver(runtime, now=now)
        assert len(receiver.got()) == attempt
        row = await delivery_row(runtime, event_id, endpoint["id"])
        assert row["status"] == "pending" and row["attempts"] == attempt and row["last_status_code"] == 500
        delays.append((row["next_attempt_at"] - now).total_seconds())
        # Not due yet a second before its time: nothing is sent.
        await deliver(runtime, now=row["next_attempt_at"] - timedelta(seconds=1))
        assert len(receiver.got()) == attempt
        now = row["next_attempt_at"]
    assert all(later > earlier for earlier, later in itertools.pairwise(delays)), delays
    assert 8 <= delays[0] <= 10.5  # base 10 s, up to 10 % jitter

    await deliver(runtime, now=now)
    row = await delivery_row(runtime, event_id, endpoint["id"])
    assert row["status"] == "succeeded" and row["attempts"] == 5 and row["next_attempt_at"] is None
    got = receiver.got()
    assert [g.status for g in got] == [500, 500, 500, 500, 200]
    assert {g.headers["webhook-id"] for g in got} == {f"msg_{event_id.hex}"}
    for g in got:  # every retry is signed afresh and verifies
        Webhook(endpoint["secret"]).verify(g.body, g.headers)

    # Succeeded once: a day later nothing more is sent.
    await deliver(runtime, now=now + timedelta(days=1))
    assert len(receiver.got()) == 5

    r = await client.get(f"{STAFF}/{endpoint['id']}/deliveries/{row['id']}", headers=admin.auth)
    log = r.json()["attempt_log"]
    assert [a["status_code"] for a in log] == [500, 500, 500, 500, 200]
    assert [a["error"] for a in log][:4] == ["HTTP 500"] * 4
    r = await client.get(f"{STAFF}/{endpoint['id']}", headers=admin.auth)
    assert r.json()["enabled"] is True and r.json()["failing_since"] is None  # a success resets the clock


async def test_retries_stop_after_the_window(
    client: httpx.AsyncClient,
    app_factory: Any,
    admin: Admin,
    university: dict[str, Any],
    receiver: Receiver,
) -> None:
    rt: Runtime = app_factory(webhook_disable_after_seconds=30 * 86400).state.runtime
    endpoint = await operator_endpoint(client, admin, receiver.url, university["id"])
    receiver.fail_always(503)
    event_id = await emit(rt, "rewards.pending", reward_event(university["id"]))

    start = now = utcnow()
    for _ in range(100):
        await deliver(rt, now=now)
        row = await delivery_row(rt, event_id, endpoint["id"])
        if row["status"] != "pending":
            break
        now = row["next_attempt_at"]
    assert row["status"] == "failed" and row["next_attempt_at"] is None
    assert now - start <= timedelta(days=3)  # no attempt after the 3-day window
    assert now - start >= timedelta(days=2)  # and retries did go on for days
    attempts = len(receiver.got())
    assert attempts == row["attempts"] and 10 <= attempts <= 40

    await deliver(rt, now=start + timedelta(days=10))
    assert len(receiver.got()) == attempts  # given up: no more tries

    # A manual redelivery sends it again with a fresh window.
    receiver.recover()
    r = await client.post(f"{STAFF}/{endpoint['id']}/deliveries/{row['id']}/redeliver", headers=admin.auth)
    assert r.status_code == 202 and r.json()["status"] == "pending"
    await deliver(rt)
    row = await delivery_row(rt, event_id, endpoint["id"])
    assert row["status"] == "succeeded" and len(receiver.got()) == attempts + 1
    r = await client.get(f"{STAFF}/{endpoint['id']}/deliveries/{row['id']}", headers=admin.auth)
    assert r.json()["attempt_log"][-1]["trigger"] == "manual"


async def test_endpoint_failing_for_the_configured_time_is_disabled_and_its_owner_emailed(
    client: httpx.AsyncClient,
    app_factory: Any,
    admin: Admin,
    university: dict[str, Any],
    receiver: Receiver,
) -> None:
    app: FastAPI = app_factory(webhook_disable_after_seconds=3600)
    rt: Runtime = app.state.runtime
    owner = new_email()
    endpoint = await operator_endpoint(client, admin, receiver.url, university["id"], contact_email=owner)
    receiver.fail_always(500)
    event_id = await emit(rt, "referrals.state_changed", referral_event(university["id"]))

    t0 = utcnow()
    await deliver(rt, now=t0)
    await deliver(rt, now=t0 + timedelta(minutes=30))
    r = await client.get(f"{STAFF}/{endpoint['id']}", headers=admin.auth)
    assert r.json()["enabled"] is True and r.json()["failing_since"] is not None
    emails_before = await sql(
        rt,
        "SELECT count(*) AS n FROM outbox_events WHERE topic = 'notifications.email' AND payload->>'to' = :t",
        t=owner,
    )
    assert emails_before[0]["n"] == 0

    await deliver(rt, now=t0 + timedelta(minutes=61))
    r = await client.get(f"{STAFF}/{endpoint['id']}", headers=admin.auth)
    body = r.json()
    assert body["enabled"] is False and "failed since" in body["disabled_reason"]
    message = await latest_message(rt, owner)
    assert message["template"] == "webhook_endpoint_disabled"
    assert message["context"]["url"] == receiver.url and message["context"]["last_error"] == "HTTP 500"
    rendered = render_email(message["template"], message["locale"], message["context"])
    assert receiver.url in rendered.text and "disabled" in rendered.subject
    sent = len(receiver.got())

    # Disabled: nothing is sent, redelivery is refused, and the email went out once.
    await deliver(rt, now=t0 + timedelta(hours=5))
    assert len(receiver.got()) == sent
    row = await delivery_row(rt, event_id, endpoint["id"])
    r = await client.post(f"{STAFF}/{endpoint['id']}/deliveries/{row['id']}/redeliver", headers=admin.auth)
    assert r.status_code == 409 and r.json()["code"] == "webhook_endpoint_disabled"
    emails = await sql(
        rt,
        "SELECT count(*) AS n FROM outbox_events WHERE topic = 'notifications.email' AND payload->>'to' = :t",
        t=owner,
    )
    assert emails[0]["n"] == 1

    # Re-enabled, the pending delivery resumes.
    receiver.recover()
    r = await client.patch(f"{STAFF}/{endpoint['id']}", json={"enabled": True}, headers=admin.auth)
    assert r.status_code == 200 and r.json()["enabled"] is True and r.json()["failing_since"] is None
    await deliver(rt, now=t0 + timedelta(days=1))
    assert (await delivery_row(rt, event_id, endpoint["id"]))["status"] == "succeeded"


async def test_event_type_and_program_filters(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin, university: dict[str, Any], receiver: Receiver
) -> None:
    p1 = await create_program(client, admin, university["id"])
    p2 = await create_program(client, admin, university["id"])
    rewards_only = await operator_endpoint(
        client, admin, receiver.url, university["id"], event_types=["reward.released"]
    )
    p1_only = await operator_endpoint(client, admin, receiver.url, university["id"], program_ids=[p1["id"]])

    await emit(runtime, "referrals.state_changed", referral_event(university["id"], p2["id"]))
    e2 = await emit(runtime, "rewards.released", reward_event(university["id"], p1["id"]))
    e3 = await emit(
        runtime,
        "referrals.referral_created",
        {**referral_event(university["id"], p1["id"]), "state": "invited"},
    )

    async def deliveries(endpoint_id: str) -> set[uuid.UUID]:
        rows = await sql(
            runtime,
            "SELECT message_id FROM webhook_deliveries WHERE endpoint_id = :e",
            e=uuid.UUID(endpoint_id),
        )
        return {r["message_id"] for r in rows}

    assert await deliveries(rewards_only["id"]) == {e2}
    assert await deliveries(p1_only["id"]) == {e2, e3}
    await deliver(runtime)
    got = receiver.got()
    assert len(got) == 3

    def received_by(secret: str) -> list[dict[str, Any]]:
        messages = []
        for g in got:
            with contextlib.suppress(WebhookVerificationError):
                messages.append(Webhook(secret).verify(g.body, g.headers))
        return sorted(messages, key=lambda m: m["type"])

    (reward,) = received_by(rewards_only["secret"])
    assert reward["type"] == "reward.released"
    assert [m["type"] for m in received_by(p1_only["secret"])] == ["referral.created", "reward.released"]
    assert reward["data"]["amount"] == {"amount": 100_000, "currency": "INR"}
    assert "member_id" not in reward["data"]


async def test_urls_must_be_https_outside_loopback(
    client: httpx.AsyncClient, admin: Admin, university: dict[str, Any]
) -> None:
    for url in (
        "http://hooks.example.com/referloop",
        "ftp://hooks.example.com/referloop",
        "https://user:secret@hooks.example.com/referloop",
        "https:///nohost",
    ):
        r = await client.post(STAFF, json={"url": url, "university_id": university["id"]}, headers=admin.auth)
        assert r.status_code == 422, (url, r.text)
        assert r.json()["code"] == "webhook_url_refused"
    r = await client.post(
        STAFF,
        json={"url": "https://hooks.example.com/referloop", "university_id": university["id"]},
        headers=admin.auth,
    )
    assert r.status_code == 201


async def test_secret_rotation_signs_with_both_secrets_for_the_overlap(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin, university: dict[str, Any], receiver: Receiver
) -> None:
    endpoint = await operator_endpoint(client, admin, receiver.url, university["id"])
    old = endpoint["secret"]
    r = await client.post(
        f"{STAFF}/{endpoint['id']}/rotate-secret", json={"previous_valid_seconds": 3600}, headers=admin.auth
    )
    assert r.status_code == 200
    new = r.json()["secret"]
    assert new != old and r.json()["previous_secret_valid_until"] is not None

    await emit(runtime, "referrals.state_changed", referral_event(university["id"]))
    await deliver(runtime)
    (got,) = receiver.got()
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(got.body, got.headers)
    Webhook(new).verify(got.body, got.headers)

    r = await client.post(
        f"{STAFF}/{endpoint['id']}/rotate-secret", json={"previous_valid_seconds": 0}, headers=admin.auth
    )
    newest = r.json()["secret"]
    await emit(runtime, "referrals.state_changed", referral_event(university["id"]))
    await deliver(runtime)
    last = receiver.got()[-1]
    Webhook(newest).verify(last.body, last.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(last.body, last.headers)


async def test_a_retried_rotation_replays_the_first_answer_and_keeps_the_original_secret(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin, university: dict[str, Any], receiver: Receiver
) -> None:
    endpoint = await operator_endpoint(client, admin, receiver.url, university["id"])
    original = endpoint["secret"]
    path = f"{STAFF}/{endpoint['id']}/rotate-secret"
    keyed = {**admin.auth, "Idempotency-Key": str(uuid.uuid4())}
    first = await client.post(path, json={"previous_valid_seconds": 3600}, headers=keyed)
    assert first.status_code == 200, first.text
    # The answer was lost; the client retries with the same key and gets the same secret.
    again = await client.post(path, json={"previous_valid_seconds": 3600}, headers=keyed)
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    new = first.json()["secret"]
    assert new != original
    # The stored answer does not hold the secret in plain text.
    (stored,) = await sql(
        runtime,
        "SELECT response_body::text AS body FROM idempotency_keys WHERE key = :k",
        k=keyed["Idempotency-Key"],
    )
    assert new not in stored["body"]

    # During the overlap a message verifies with the original secret and with the new one.
    await emit(runtime, "referrals.state_changed", referral_event(university["id"]))
    await deliver(runtime)
    (got,) = receiver.got()
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    Webhook(original).verify(got.body, got.headers)
    Webhook(new).verify(got.body, got.headers)

    # The key is required; the same key with another body is refused.
    r = await client.post(
        path, json={"previous_valid_seconds": 0}, headers={"Authorization": admin.auth["Authorization"]}
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "idempotency-key"
    r = await client.post(path, json={"previous_valid_seconds": 0}, headers=keyed)
    assert r.status_code == 422 and r.json()["code"] == "idempotency_key_reused"


async def test_deleted_endpoint_gets_nothing_more(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin, university: dict[str, Any], receiver: Receiver
) -> None:
    endpoint = await operator_endpoint(client, admin, receiver.url, university["id"])
    receiver.fail_next(1)
    event_id = await emit(runtime, "referrals.state_changed", referral_event(university["id"]))
    await deliver(runtime)
    assert (await delivery_row(runtime, event_id, endpoint["id"]))["status"] == "pending"

    r = await client.delete(f"{STAFF}/{endpoint['id']}", headers=admin.auth)
    assert r.status_code == 204
    assert (await delivery_row(runtime, event_id, endpoint["id"]))["status"] == "failed"
    await emit(runtime, "referrals.state_changed", referral_event(university["id"]))
    await deliver(runtime, now=utcnow() + timedelta(hours=1))
    assert len(receiver.got()) == 1
    r = await client.get(f"{STAFF}/{endpoint['id']}", headers=admin.auth)
    assert r.status_code == 404


async def test_a_slow_receiver_times_out_and_is_retried(
    client: httpx.AsyncClient, app_factory: Any, admin: Admin, university: dict[str, Any], receiver: Receiver
) -> None:
    rt: Runtime = app_factory(webhook_timeout_seconds=0.3).state.runtime
    endpoint = await operator_endpoint(client, admin, receiver.url, university["id"])
    receiver.hold_seconds = 2.0
    event_id = await emit(rt, "referrals.state_changed", referral_event(university["id"]))
    await deliver(rt)
    row = await delivery_row(rt, event_id, endpoint["id"])
    assert row["status"] == "pending" and row["attempts"] == 1 and row["last_status_code"] is None
    r = await client.get(f"{STAFF}/{endpoint['id']}/deliveries/{row['id']}", headers=admin.auth)
    (attempt,) = r.json()["attempt_log"]
    assert attempt["error"].startswith("Timed out after 0.3 s") and attempt["status_code"] is None
    assert 250 <= attempt["latency_ms"] < 2000

    receiver.hold_seconds = 0.0
    await deliver(rt, now=row["next_attempt_at"])
    assert (await delivery_row(rt, event_id, endpoint["id"]))["status"] == "succeeded"
    actions = await sql(
        rt, "SELECT action FROM audit_log WHERE target_id = :t ORDER BY created_at, id", t=endpoint["id"]
    )
    assert [a["action"] for a in actions] == ["webhooks.endpoint_created"]
