"""End to end with a real `referloop worker`: an invitation and a partner's outcome report become
outbox events, the worker's consumers turn them into deliveries and its periodic job sends them,
signed, to the partner's endpoint."""

from __future__ import annotations

import asyncio
import signal

import httpx
from standardwebhooks import Webhook

from referloop.runtime import Runtime
from tests.notifications.support import start_worker, worker_env
from tests.referrals.helpers import Admin
from tests.referrals.partner.helpers import invite, make_partner, new_member, outcome
from tests.webhooks.support import Receiver


async def test_worker_delivers_lifecycle_events_to_the_partner(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin, receiver: Receiver
) -> None:
    partner = await make_partner(client, admin)
    r = await client.post(
        "/partner/v1/webhook-endpoints",
        json={"url": receiver.url},
        headers={"Authorization": f"Bearer {partner.key}"},
    )
    assert r.status_code == 201, r.text
    secret = r.json()["secret"]
    member = await new_member(client)
    referral = await invite(client, member, partner.program_id)
    r = await client.post(
        "/partner/v1/outcomes",
        json={"items": [outcome("application_submitted", referral_id=referral["id"])]},
        headers=partner.headers(),
    )
    assert r.json()["items"][0]["status"] == "applied"

    worker = await start_worker(worker_env(runtime.settings))
    try:
        async with asyncio.timeout(90):
            while len(receiver.got()) < 2:
                await asyncio.sleep(0.1)
        worker.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(worker.communicate(), 30)
        assert worker.returncode == 0, err.decode()
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()

    messages = sorted(
        (Webhook(secret).verify(g.body, g.headers) for g in receiver.got()), key=lambda m: m["type"]
    )
    assert [m["type"] for m in messages] == ["referral.created", "referral.state_changed"]
    assert {m["data"]["referral_id"] for m in messages} == {referral["id"]}
    assert messages[1]["data"]["to_state"] == "applied"
    assert all(m["data"]["university_id"] == partner.university_id for m in messages)
    assert len({g.headers["webhook-id"] for g in receiver.got()}) == 2
    assert messages[0]["data"]["program_id"] == partner.program_id
