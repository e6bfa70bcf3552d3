"""A real `referloop worker` process killed between the provider's answer and saving it (fault
point `payouts.after_provider_call:<withdrawal id>`, exit 137 as after kill -9). The next worker
finds the withdrawal processing with no payout saved and asks the provider for this attempt's
payout (by our reference) before anything else: it finds the one the first call made and adopts it,
even though the member deleted the payout method meanwhile (which used to fail the withdrawal and
release the money the provider was paying out). Had there been none, it would send again with the
same idempotency key. The member is paid once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from fastapi import FastAPI

from referloop import ledger
from referloop.app import create_app
from referloop.cli import run_migrations
from referloop.payouts.withdrawals.service.payouts import FAULT_AFTER_PROVIDER_CALL
from referloop.runtime import Runtime
from tests.conftest import make_settings
from tests.factories import asgi_client, credit_member, db_value, register_member
from tests.fakes import FakeRazorpayX, provider_env
from tests.notifications.support import start_worker, worker_env
from tests.payouts.test_withdrawals_providers import Setup, deliver_rzp, provider_key
from tests.payouts.test_withdrawals_support import (
    assert_reconciles,
    balance,
    provider_overrides,
    request_withdrawal,
    usable_method,
)


async def drain(proc: asyncio.subprocess.Process) -> bytes:
    """Read a worker's output so that its pipes never fill up; returns stderr."""
    assert proc.stdout is not None and proc.stderr is not None
    _, err = await asyncio.gather(proc.stdout.read(), proc.stderr.read())
    return err


async def wait_until(rt: Runtime, sql: str, timeout: float = 60.0, **params: object) -> None:
    async with asyncio.timeout(timeout):
        while not await db_value(rt, sql, **params):
            await asyncio.sleep(0.1)


@pytest.fixture
def own_database_url() -> Iterator[str]:
    """A database of this test's own: the worker drains every pending event of the database it
    serves, and the shared test database holds other tests' events (some for slow consumers)."""
    admin_url = os.environ.get("TEST_DATABASE_URL", "postgresql://root@127.0.0.1:5432/postgres")
    name = f"referloop_test_crash_{uuid.uuid4().hex[:12]}"

    async def execute(sql: str) -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(execute(f'CREATE DATABASE "{name}"'))
    url = urlsplit(admin_url)._replace(path=f"/{name}").geturl()
    try:
        run_migrations(url)
        yield url
    finally:
        asyncio.run(execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def test_worker_killed_after_the_provider_call_pays_once_on_retry(
    own_database_url: str, redis_url: str, tmp_var: Path, fake_razorpayx: FakeRazorpayX
) -> None:
    settings = make_settings(
        own_database_url,
        redis_url,
        tmp_var,
        payout_provider="razorpayx",
        **provider_overrides(fake_razorpayx),
    )
    rt = Runtime.build(settings)
    try:
        await _crash_and_retry(create_app(rt.settings, runtime=rt), rt, fake_razorpayx)
    finally:
        await rt.close()


async def _crash_and_retry(app: FastAPI, rt: Runtime, fake_razorpayx: FakeRazorpayX) -> None:
    async with asgi_client(app) as client:
        member = await register_member(client)
        await credit_member(rt, member.id, 9_000)
        method_id = await usable_method(client, rt, member)
        r = await request_withdrawal(client, member, method_id, 9_000)
        assert r.json()["state"] == "approved", r.text
    withdrawal_id = r.json()["id"]
    key = provider_key(withdrawal_id)
    env = worker_env(rt.settings, amqp_url="", payout_provider="razorpayx") | provider_env(fake_razorpayx)

    crashing = await start_worker(
        env | {"REFERLOOP_FAULT_INJECT": f"{FAULT_AFTER_PROVIDER_CALL}:{withdrawal_id}"}
    )
    stderr = await asyncio.wait_for(drain(crashing), 90)
    assert await crashing.wait() == 137, stderr.decode()
    assert b"fault injected at payouts.after_provider_call" in stderr

    # The provider made the payout; we never saved its answer.
    [payout_id] = fake_razorpayx.created_by_key[key]
    row = await db_value(
        rt,
        "SELECT state || '/' || coalesce(provider_payout_id, '-') FROM withdrawals WHERE id = :w",
        w=withdrawal_id,
    )
    assert row == "processing/-"
    assert await balance(rt, member.id) == ledger.MemberBalance("INR", 0, 0, 9_000)
    async with asgi_client(app) as client:
        r = await client.delete(f"/v1/payout-methods/{method_id}", headers=member.auth)
        assert r.status_code == 204, r.text

    worker = await start_worker(env)
    output = asyncio.create_task(drain(worker))
    try:
        await wait_until(
            rt, "SELECT provider_payout_id IS NOT NULL FROM withdrawals WHERE id = :w", w=withdrawal_id
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(worker.wait(), 30)
        await output

    sent = [
        r
        for r in fake_razorpayx.requests_to("POST", "/v1/payouts")
        if r.headers.get("x-payout-idempotency") == key
    ]
    assert len(sent) == 1  # the retry looked the payout up instead of sending it again
    assert fake_razorpayx.requests_to("GET", "/v1/payouts")  # by our reference
    assert fake_razorpayx.created_by_key[key] == [payout_id]  # one payout
    assert (
        await db_value(rt, "SELECT provider_payout_id FROM withdrawals WHERE id = :w", w=withdrawal_id)
        == payout_id
    )

    fake_razorpayx.set_status(payout_id, "processed")
    async with asgi_client(app) as client:
        r = await deliver_rzp(Setup(app, client), fake_razorpayx, *fake_razorpayx.webhook(payout_id))
        assert r.status_code == 200
        mine = (await client.get(f"/v1/withdrawals/{withdrawal_id}", headers=member.auth)).json()
    assert mine["state"] == "paid"
    assert await balance(rt, member.id) == ledger.MemberBalance("INR", 0, 0, 0)
    assert len(fake_razorpayx.payouts_for_reference(withdrawal_id)) == 1
    await assert_reconciles(rt)
