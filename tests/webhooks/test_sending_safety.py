"""The sender under slow receivers, several workers and hostile URLs: one hard deadline per attempt,
results recorded as they come and only by the worker still holding the delivery, and no request to
a private or loopback address in production (checked when registered and again when sending)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI

from referloop.core.db import utcnow
from referloop.runtime import Runtime
from referloop.webhooks.service.deliveries import deliver_due
from tests.conftest import random_ip
from tests.referrals.helpers import Admin, sql
from tests.webhooks.support import Receiver, deliver, emit, referral_event
from tests.webhooks.test_deliveries import STAFF, delivery_row, operator_endpoint


async def attempt_log(client: httpx.AsyncClient, admin: Admin, endpoint_id: str, delivery_id: Any) -> Any:
    r = await client.get(f"{STAFF}/{endpoint_id}/deliveries/{delivery_id}", headers=admin.auth)
    assert r.status_code == 200, r.text
    return r.json()["attempt_log"]


async def wait_for(condition: Any, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.02)


async def test_a_receiver_trickling_its_answer_is_cut_off_at_the_deadline(
    client: httpx.AsyncClient, app_factory: Any, admin: Admin, university: dict[str, Any], receiver: Receiver
) -> None:
    rt: Runtime = app_factory(webhook_timeout_seconds=1).state.runtime
    endpoint = await operator_endpoint(client, admin, receiver.url, university["id"])
    receiver.trickle_seconds = 0.2  # each byte well inside a per-read timeout: only a total deadline helps
    event_id = await emit(rt, "referrals.state_changed", referral_event(university["id"]))

    started = time.monotonic()
    async with asyncio.timeout(10):
        await deliver(rt)
    assert time.monotonic() - started < 3

    # The receiver answered 200 in time: delivered once, and the log shows what it sent so far.
    row = await delivery_row(rt, event_id, endpoint["id"])
    assert row["status"] == "succeeded" and row["attempts"] == 1 and len(receiver.got()) == 1
    (attempt,) = await attempt_log(client, admin, endpoint["id"], row["id"])
    assert attempt["status_code"] == 200 and 900 <= attempt["latency_ms"] < 2500
    assert attempt["response_excerpt"].startswith(".")


async def test_a_late_worker_does_not_resend_what_another_already_delivered(
    client: httpx.AsyncClient, app_factory: Any, admin: Admin, university: dict[str, Any], receiver: Receiver
) -> None:
    rt: Runtime = app_factory(webhook_timeout_seconds=3).state.runtime
    slow = Receiver(hold_seconds=1.5)
    slow.start()
    try:
        fast_endpoint = await operator_endpoint(client, admin, receiver.url, university["id"])
        slow_endpoint = await operator_endpoint(client, admin, slow.url, university["id"])
        event_id = await emit(rt, "referrals.state_changed", referral_event(university["id"]))

        t0 = utcnow()
        first = asyncio.create_task(deliver_due(rt, now=t0))
        await wait_for(lambda: receiver.got() and slow.got())
        await asyncio.sleep(0.3)  # the fast answer is in; the slow one is still on its way
        # A second worker whose clock is past the first one's lease (it stalled, or its clock runs
        # ahead) claims what is still leased to nobody.
        leased_until = (await delivery_row(rt, event_id, slow_endpoint["id"]))["next_attempt_at"]
        late = leased_until + timedelta(seconds=1)
        assert await deliver_due(rt, now=late) == 1
        await first

        assert len(receiver.got()) == 1  # the fast endpoint got the message once
        fast = await delivery_row(rt, event_id, fast_endpoint["id"])
        assert fast["status"] == "succeeded" and fast["attempts"] == 1
        # The slow one was sent again (its lease had run out), and settled once, by the late worker.
        assert len(slow.got()) == 2
        row = await delivery_row(rt, event_id, slow_endpoint["id"])
        assert row["status"] == "succeeded" and row["attempts"] == 1
        assert len(await attempt_log(client, admin, slow_endpoint["id"], row["id"])) == 1
    finally:
        slow.stop()


async def test_a_redelivery_asked_for_during_an_attempt_is_not_undone_by_its_result(
    client: httpx.AsyncClient, app_factory: Any, admin: Admin, university: dict[str, Any], receiver: Receiver
) -> None:
    rt: Runtime = app_factory(webhook_timeout_seconds=3).state.runtime
    endpoint = await operator_endpoint(client, admin, receiver.url, university["id"])
    receiver.hold_seconds = 1.0
    receiver.fail_next(1, 500)
    event_id = await emit(rt, "referrals.state_changed", referral_event(university["id"]))
    row = await delivery_row(rt, event_id, endpoint["id"])

    sending = asyncio.create_task(deliver_due(rt))
    await wait_for(lambda: receiver.got())
    r = await client.post(f"{STAFF}/{endpoint['id']}/deliveries/{row['id']}/redeliver", headers=admin.auth)
    assert r.status_code == 202
    await sending  # its 500 arrives after the redelivery: it must not push the redelivery back

    receiver.hold_seconds = 0.0
    await deliver(rt)
    assert [g.status for g in receiver.got()] == [500, 200]
    row = await delivery_row(rt, event_id, endpoint["id"])
    assert row["status"] == "succeeded"
    log = await attempt_log(client, admin, endpoint["id"], row["id"])
    assert log[-1]["trigger"] == "manual" and log[-1]["status_code"] == 200


# -- server-side request forgery ------------------------------------------------------------------


@pytest.fixture
async def production(app_factory: Any) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app: FastAPI = app_factory(env="production")
    transport = httpx.ASGITransport(app=app, client=(random_ip(), 50000))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://test", headers={"X-Forwarded-For": random_ip()}
    ) as c:
        yield app, c


def _machine_name_resolving_to_a_private_address() -> str:
    name = socket.gethostname()
    try:
        addresses = {i[4][0] for i in socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM)}
    except OSError:
        pytest.skip(f"this machine's name {name!r} does not resolve")
    if all(ipaddress.ip_address(str(a)).is_global for a in addresses):
        pytest.skip(f"this machine's name {name!r} resolves to public addresses only")
    return name


async def test_production_refuses_urls_that_reach_private_addresses(
    production: tuple[FastAPI, httpx.AsyncClient], admin: Admin, university: dict[str, Any]
) -> None:
    _, prod = production
    name = _machine_name_resolving_to_a_private_address()
    for url in (
        "https://127.1/hooks",
        "https://2130706433/hooks",
        "https://0x7f000001/hooks",
        "https://0177.0.0.1/hooks",
        "https://127.0.0.1./hooks",
        "https://10.0.0.7/hooks",
        "https://169.254.169.254/latest",
        "https://[::1]/hooks",
        "https://[::ffff:127.0.0.1]/hooks",
        "https://localhost/hooks",
        "https://localhost./hooks",
        f"https://{name}/hooks",
        # IPv6 forms that carry a private IPv4 address (NAT64, 6to4, IPv4-compatible)
        "https://[64:ff9b::a00:1]/hooks",
        "https://[2002:7f00:1::]/hooks",
        "https://[::127.0.0.1]/hooks",
        # Names a resolver cannot take (a 500 before): an over-long label, an empty one
        f"https://{'a' * 64}.example.com/hooks",
        "https://a..example.com/hooks",
    ):
        r = await prod.post(STAFF, json={"url": url, "university_id": university["id"]}, headers=admin.auth)
        assert r.status_code == 422, (url, r.text)
        assert r.json()["code"] == "webhook_url_refused", url
    rows = await sql(
        production[0].state.runtime,
        "SELECT count(*) AS n FROM webhook_endpoints WHERE deleted_at IS NULL",
    )
    assert rows[0]["n"] == 0

    # A public address and a name that does not resolve (yet) are accepted; the sender checks again.
    for url in ("https://1.1.1.1/hooks", f"https://{uuid.uuid4().hex}.invalid/hooks"):
        r = await prod.post(STAFF, json={"url": url, "university_id": university["id"]}, headers=admin.auth)
        assert r.status_code == 201, (url, r.text)


async def test_numeric_host_shorthands_are_refused_everywhere(
    client: httpx.AsyncClient, admin: Admin, university: dict[str, Any]
) -> None:
    for url in ("https://127.1/hooks", "https://2130706433/hooks", "https://0x7f000001/hooks"):
        r = await client.post(STAFF, json={"url": url, "university_id": university["id"]}, headers=admin.auth)
        assert r.status_code == 422 and r.json()["code"] == "webhook_url_refused", url


async def test_production_sender_does_not_connect_to_a_private_address(
    client: httpx.AsyncClient,
    runtime: Runtime,
    production: tuple[FastAPI, httpx.AsyncClient],
    admin: Admin,
    university: dict[str, Any],
    receiver: Receiver,
) -> None:
    # Registered where loopback is allowed; sent by a production worker. The second endpoint's name
    # is the DNS rebinding case: a name that resolves to loopback by the time we send.
    ip_endpoint = await operator_endpoint(client, admin, receiver.url, university["id"])
    port = urlsplit(receiver.url).port
    name_endpoint = await operator_endpoint(
        client, admin, f"http://localhost:{port}/rebound", university["id"]
    )
    rt: Runtime = production[0].state.runtime
    event_id = await emit(rt, "referrals.state_changed", referral_event(university["id"]))

    assert await deliver(rt) == 2
    assert receiver.got() == []  # not a single connection reached the receiver
    for endpoint in (ip_endpoint, name_endpoint):
        row = await delivery_row(rt, event_id, endpoint["id"])
        assert row["status"] == "pending" and row["attempts"] == 1 and row["last_status_code"] is None
        (attempt,) = await attempt_log(client, admin, endpoint["id"], row["id"])
        assert "private or reserved address" in attempt["error"], attempt

    # The same deliveries sent from a non-production worker do arrive (the guard is what stopped them).
    rows = [await delivery_row(rt, event_id, e["id"]) for e in (ip_endpoint, name_endpoint)]
    await deliver(runtime, now=max(r["next_attempt_at"] for r in rows))
    assert {g.path for g in receiver.got()} == {urlsplit(receiver.url).path, "/rebound"}
