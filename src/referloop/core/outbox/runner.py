"""The worker's main loop: relay + broker consumers when `amqp_url` is set, else the in-process drain;
beside it, the periodic jobs domains register (core/periodic.py).

`stop` (set on SIGTERM) ends the loop after the batch in hand; consumers stop taking messages and the
ones being handled finish before the connection closes (unacked ones go back to their queue)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

import aio_pika
import structlog

from referloop.core.outbox.broker import CONNECT_TIMEOUT_SECONDS, BrokerConsumers
from referloop.core.outbox.consumers import ConsumerRegistry
from referloop.core.outbox.drain import drain_once
from referloop.core.outbox.relay import Relay
from referloop.core.outbox.service import short_error
from referloop.core.periodic import PeriodicJob
from referloop.core.wakeups import Wakeups

if TYPE_CHECKING:
    from referloop.runtime import Runtime

log = structlog.get_logger(__name__)

_MAX_ERROR_PAUSE_SECONDS = 30.0


async def _sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def _loop(rt: Runtime, stop: asyncio.Event, step: Callable[[], Awaitable[int]], what: str) -> None:
    """Run `step` until stopped: again at once after a full batch, after the poll interval otherwise,
    and after a growing pause while it keeps failing (a database or broker outage)."""
    settings = rt.settings
    errors = 0
    while not stop.is_set():
        try:
            claimed = await step()
            errors = 0
        except Exception as exc:
            errors += 1
            pause = min(_MAX_ERROR_PAUSE_SECONDS, settings.outbox_poll_interval_seconds * 2**errors)
            log.error(f"{what} failed", error=short_error(exc), retry_in_seconds=pause)
            await _sleep_unless_stopped(stop, pause)
            continue
        if claimed < settings.outbox_batch_size:
            await _sleep_unless_stopped(stop, settings.outbox_poll_interval_seconds)


async def run_in_process(rt: Runtime, registry: ConsumerRegistry, stop: asyncio.Event) -> None:
    log.info(
        "worker draining the outbox in-process (no AMQP_URL)", consumers=[c.name for c in registry.all()]
    )
    await _loop(rt, stop, lambda: drain_once(rt, registry), "outbox drain")


async def run_with_broker(rt: Runtime, registry: ConsumerRegistry, stop: asyncio.Event) -> None:
    # Consumers use a robust connection: aio-pika reconnects and restores their queues and subscriptions.
    # The first connection and the declarations are bounded: a broker that takes the socket but never
    # answers must end the worker with an error, not leave it running and doing nothing.
    connection = await asyncio.wait_for(
        aio_pika.connect_robust(rt.settings.amqp_url), CONNECT_TIMEOUT_SECONDS
    )
    consumers = BrokerConsumers(rt, connection, registry.all())
    relay = Relay(rt)
    try:
        # Queues first, so that the first events the relay publishes already have somewhere to go.
        await asyncio.wait_for(consumers.start(), CONNECT_TIMEOUT_SECONDS * 4)
        log.info("worker relaying the outbox to RabbitMQ", namespace=rt.settings.amqp_namespace)
        await _loop(rt, stop, relay.relay_once, "outbox relay")
    finally:
        await consumers.stop()
        await relay.close()
        await connection.close()


async def run_periodic(
    rt: Runtime, job: PeriodicJob, stop: asyncio.Event, wakeups: Wakeups | None = None
) -> None:
    """Call `job` every `interval_seconds` until stopped; at once again after a full batch, and when
    its wake channel is notified. A failing run is logged and retried at the next interval, never
    ending the worker."""
    woken = wakeups.event(job.wake_channel) if wakeups is not None and job.wake_channel else None
    while not stop.is_set():
        if woken is not None:
            woken.clear()  # before the run: a notification during it makes the next run start at once
        try:
            done = await job.run(rt)
        except Exception as exc:
            log.error("periodic job failed", job=job.name, error=short_error(exc))
            done = 0
        if job.full_batch is None or done < job.full_batch:
            await _sleep_until(stop, job.interval_seconds, woken)


async def _sleep_until(stop: asyncio.Event, seconds: float, woken: asyncio.Event | None) -> None:
    if woken is None:
        await _sleep_unless_stopped(stop, seconds)
        return
    waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(woken.wait())}
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def run_worker(
    rt: Runtime, registry: ConsumerRegistry, stop: asyncio.Event, jobs: Iterable[PeriodicJob] = ()
) -> None:
    """The outbox loop (broker or in-process) and every periodic job, until `stop` is set."""
    outbox = (
        run_with_broker(rt, registry, stop) if rt.settings.amqp_url else run_in_process(rt, registry, stop)
    )
    jobs = list(jobs)
    wakeups = Wakeups(rt, sorted({j.wake_channel for j in jobs if j.wake_channel}))
    tasks = [
        asyncio.ensure_future(outbox),
        asyncio.ensure_future(wakeups.run(stop)),
        *(asyncio.ensure_future(run_periodic(rt, j, stop, wakeups)) for j in jobs),
    ]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:  # one loop failed for good (e.g. no broker at start): stop the others too
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
