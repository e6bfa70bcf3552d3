"""The worker's reward job is woken by the commit that queued a reward, not by its next poll; and
only such commits notify (a NOTIFY serialises the commits that send one, so none is sent in vain)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from referloop.core.db import to_driver_dsn
from referloop.core.outbox.runner import run_periodic
from referloop.core.periodic import PeriodicJob
from referloop.core.wakeups import Wakeups
from referloop.referrals.rewards.models import REWARDS_CHANNEL
from referloop.referrals.rewards.tasks import process_rewards
from referloop.runtime import Runtime
from tests.factories import db_value
from tests.referrals.helpers import Admin
from tests.referrals.lifecycle.helpers import (
    enrolled,
    invite,
    lead_email,
    make_catalogue,
    make_members,
    report,
    rewards,
    state_of,
)

POLL_SECONDS = 60.0  # far longer than the test waits: only a wake-up can grant in time


@pytest.fixture
async def worker_job(runtime: Runtime) -> AsyncIterator[Wakeups]:
    """The reward job as the worker runs it, polling once a minute, with its wake-up listener."""
    stop = asyncio.Event()
    wakeups = Wakeups(runtime, [REWARDS_CHANNEL])
    job = PeriodicJob("test.rewards", POLL_SECONDS, process_rewards, wake_channel=REWARDS_CHANNEL)
    tasks = [
        asyncio.create_task(wakeups.run(stop)),
        asyncio.create_task(run_periodic(runtime, job, stop, wakeups)),
    ]
    await asyncio.wait_for(wakeups.listening.wait(), 10)
    await asyncio.sleep(0.3)  # the job's first pass (at start) is over: it now waits
    try:
        yield wakeups
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)


async def granted_within(rt: Runtime, referral: uuid.UUID, seconds: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if [r["status"] for r in await rewards(rt, referral)] == ["pending"]:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    return None


async def test_a_queued_reward_is_granted_at_once_not_at_the_next_poll(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin, worker_job: Wakeups
) -> None:
    cat = await make_catalogue(client, admin)
    [referrer] = await make_members(runtime, 1)
    referral, _ = await enrolled(runtime, cat, referrer)
    took = await granted_within(runtime, referral, 5)
    assert took is not None and took < 5


async def test_the_listener_reconnects_after_its_connection_is_killed(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin, worker_job: Wakeups
) -> None:
    cat = await make_catalogue(client, admin)
    [referrer] = await make_members(runtime, 1)
    killed = worker_job.backend_pid
    assert await db_value(runtime, "SELECT pg_terminate_backend(:p)", p=killed)
    deadline = time.monotonic() + 10
    while not (worker_job.listening.is_set() and worker_job.backend_pid != killed):
        assert time.monotonic() < deadline, "the listener did not reconnect"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # the pass its reconnection woke is over
    referral, _ = await enrolled(runtime, cat, referrer)
    assert await granted_within(runtime, referral, 5) is not None


@pytest.fixture
async def notifications(runtime: Runtime) -> AsyncIterator[list[str]]:
    """Every notification on the rewards channel of this test's database, as they arrive."""
    heard: list[str] = []
    connection = await asyncpg.connect(to_driver_dsn(runtime.settings.database_url))
    await connection.add_listener(REWARDS_CHANNEL, lambda *args: heard.append(args[2]))
    try:
        yield heard
    finally:
        await connection.close()


async def heard_after(heard: list[str], seconds: float = 0.5) -> int:
    """How many notifications arrived, after a pause long enough for a committed one to be delivered."""
    await asyncio.sleep(seconds)
    count = len(heard)
    heard.clear()
    return count


async def test_only_commits_that_queue_a_reward_or_ask_one_back_notify_the_worker(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin, notifications: list[str]
) -> None:
    cat = await make_catalogue(client, admin)  # one rule: the referrer, at enrolment
    [referrer] = await make_members(runtime, 1)
    email = lead_email()
    referral = await invite(runtime, referrer, cat.program_id, email=email)
    await report(runtime, cat.university_id, "application_submitted", email=email)
    assert await state_of(runtime, referral) == "applied"
    assert await heard_after(notifications) == 0  # the campaign has no rule for applying

    await report(runtime, cat.university_id, "enrolled", email=email)
    assert [r["status"] for r in await rewards(runtime, referral)] == ["queued"]
    assert await heard_after(notifications) == 1

    await report(runtime, cat.university_id, "enrolled", email=email)  # the partner says it again
    assert await heard_after(notifications) == 0

    await report(runtime, cat.university_id, "enrolment_cancelled", email=email)
    [reward] = await rewards(runtime, referral)
    assert reward["reversal_requested_at"] is not None
    assert await heard_after(notifications) == 1
