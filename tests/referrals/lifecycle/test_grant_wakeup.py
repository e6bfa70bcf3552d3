"""The worker's reward job is woken by the commit that queued a reward, not by its next poll."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from referloop.core.outbox.runner import run_periodic
from referloop.core.periodic import PeriodicJob
from referloop.core.wakeups import Wakeups
from referloop.referrals.rewards.models import REWARDS_CHANNEL
from referloop.referrals.rewards.tasks import process_rewards
from referloop.runtime import Runtime
from tests.factories import db_value
from tests.referrals.helpers import Admin
from tests.referrals.lifecycle.helpers import enrolled, make_catalogue, make_members, rewards

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
