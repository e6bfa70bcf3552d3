"""The outbox relay, the broker consumers and the in-process drain, against real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.db import utcnow
from referloop.core.outbox import enqueue
from referloop.core.outbox import relay as relay_module
from referloop.core.outbox.broker import BrokerConsumers, Topology
from referloop.core.outbox.consumers import ConsumerRegistry, handle_once, topic_matches
from referloop.core.outbox.dead import retry_dead
from referloop.core.outbox.drain import drain_once
from referloop.core.outbox.models import DeadLetter, InboxRecord, OutboxEvent
from referloop.core.outbox.relay import BrokerUnavailableError, Relay
from referloop.core.outbox.runner import run_worker
from referloop.core.outbox.stats import OutboxStats, outbox_stats
from referloop.core.periodic import PeriodicJob
from referloop.runtime import Runtime
from tests.notifications.support import BrokerNamespace, run_cli, start_worker, wait_for_output, worker_env


def with_settings(rt: Runtime, **overrides: Any) -> Runtime:
    return dataclasses.replace(rt, settings=rt.settings.model_copy(update=overrides))


async def enqueue_committed(rt: Runtime, topic: str, payload: dict[str, Any]) -> uuid.UUID:
    async with rt.db.sessionmaker() as session, session.begin():
        return await enqueue(session, topic, payload)


async def load_event(rt: Runtime, event_id: uuid.UUID) -> OutboxEvent:
    async with rt.db.sessionmaker() as session:
        event = await session.get(OutboxEvent, event_id)
    assert event is not None
    return event


async def until(predicate: Any, timeout: float = 15.0, step: float = 0.05) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(step)


async def is_published(rt: Runtime, *ids: uuid.UUID) -> bool:
    async with rt.db.sessionmaker() as session:
        pending = await session.scalar(
            select(func.count())
            .select_from(OutboxEvent)
            .where(OutboxEvent.id.in_(ids), OutboxEvent.published_at.is_(None))
        )
    return pending == 0


async def run_until_published(step: Any, rt: Runtime, *ids: uuid.UUID) -> None:
    """Other tests' rows may be due too: run batches until ours are through."""

    async def done() -> bool:
        await step()
        return await is_published(rt, *ids)

    await until(done)


class Recorder:
    """A test consumer's handler: records calls and writes a follow-up event in the handler's session,
    so that its database effect commits (or not) together with the inbox record."""

    def __init__(self, fail_times: int = 0) -> None:
        self.calls: list[tuple[uuid.UUID, dict[str, Any], float]] = []
        self.fail_times = fail_times

    async def __call__(
        self, session: AsyncSession, rt: Runtime, event_id: uuid.UUID, payload: dict[str, Any]
    ) -> None:
        self.calls.append((event_id, payload, time.monotonic()))
        if len(self.calls) <= self.fail_times:
            raise RuntimeError(f"handler failure #{len(self.calls)}")
        await enqueue(session, "test.followup", {"source": str(event_id)})


async def followups(rt: Runtime, event_id: uuid.UUID) -> int:
    async with rt.db.sessionmaker() as session:
        return int(
            await session.scalar(
                select(func.count())
                .select_from(OutboxEvent)
                .where(
                    OutboxEvent.topic == "test.followup",
                    OutboxEvent.payload["source"].astext == str(event_id),
                )
            )
            or 0
        )


@pytest.fixture
async def probe(broker_ns: BrokerNamespace) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A plain channel to look at queues with (see `queue_count`)."""
    connection = await aio_pika.connect(broker_ns.amqp_url)
    yield await connection.channel()
    await connection.close()


# --- topic patterns ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("notifications.email", "notifications.email", True),
        ("notifications.*", "notifications.sms", True),
        ("notifications.*", "notifications.sms.bulk", False),
        ("notifications.#", "notifications", True),
        ("#.created", "referrals.link.created", True),
        ("referrals.*.created", "referrals.created", False),
    ],
)
def test_topic_patterns_follow_amqp_semantics(pattern: str, topic: str, expected: bool) -> None:
    assert topic_matches(pattern, topic) is expected


# --- relay to RabbitMQ ---------------------------------------------------------------------------------


async def test_relay_publishes_with_confirms_and_marks_rows(
    runtime: Runtime, broker_ns: BrokerNamespace, unique: str
) -> None:
    rt = dataclasses.replace(runtime, settings=broker_ns.settings(runtime.settings, []))
    relay = Relay(rt)
    connection = await aio_pika.connect(broker_ns.amqp_url)
    try:
        channel = await connection.channel()
        exchange = await Topology(rt.settings).declare_exchange(channel)
        queue = await channel.declare_queue(f"{broker_ns.name}.probe", exclusive=True)
        await queue.bind(exchange, routing_key=f"test.{unique}.#")

        ids = [await enqueue_committed(rt, f"test.{unique}.created", {"n": n}) for n in range(3)]
        # A transaction that rolls back leaves nothing to publish.
        async with rt.db.sessionmaker() as session, session.begin():
            rolled_back = await enqueue(session, f"test.{unique}.created", {"n": 99})
            await session.rollback()

        await run_until_published(relay.relay_once, rt, *ids)

        received: dict[str, Any] = {}
        async with asyncio.timeout(10):
            async with queue.iterator() as messages:
                async for message in messages:
                    async with message.process():
                        received[str(message.message_id)] = message
                    if len(received) == 3:
                        break
        assert set(received) == {str(i) for i in ids}
        for i, event_id in enumerate(ids):
            message = received[str(event_id)]
            assert message.routing_key == f"test.{unique}.created"
            assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
            assert json.loads(message.body) == {"n": i}
            row = await load_event(rt, event_id)
            assert row.published_at is not None and row.attempts == 0 and row.last_error is None
        assert await load_event_or_none(rt, rolled_back) is None
        assert await queue_is_drained(channel, queue.name)  # nothing else was published
    finally:
        await relay.close()
        await connection.close()


async def load_event_or_none(rt: Runtime, event_id: uuid.UUID) -> OutboxEvent | None:
    async with rt.db.sessionmaker() as session:
        return await session.get(OutboxEvent, event_id)


async def test_relay_backs_off_a_failed_publish_and_recovers(
    runtime: Runtime, broker_ns: BrokerNamespace, unique: str
) -> None:
    rt = dataclasses.replace(
        runtime, settings=broker_ns.settings(runtime.settings, [], outbox_backoff_base_seconds=0.5)
    )
    relay = Relay(rt)
    connection = await aio_pika.connect(broker_ns.amqp_url)
    try:
        await relay.relay_once()  # connected, exchange declared
        channel = await connection.channel()
        await channel.exchange_delete(Topology(rt.settings).events_exchange)  # an operator's mistake

        event_id = await enqueue_committed(rt, f"test.{unique}.created", {"k": "v"})
        before = utcnow()
        while (await load_event(rt, event_id)).attempts == 0:
            await relay.relay_once()
        row = await load_event(rt, event_id)
        assert row.published_at is None and row.dead_at is None
        assert row.last_error is not None and "NOT_FOUND" in row.last_error
        # First retry after base * 2^0 seconds, minus at most 10 % jitter.
        assert before + timedelta(seconds=0.44) <= row.available_at <= utcnow() + timedelta(seconds=0.5)

        # The relay re-declares the exchange on its next channel; the row goes out once due.
        await asyncio.sleep(0.5)
        await run_until_published(relay.relay_once, rt, event_id)
        assert (await load_event(rt, event_id)).attempts == 1
    finally:
        await relay.close()
        await connection.close()


class StallingProxy:
    """A TCP hop between the relay and RabbitMQ that can stop passing the broker's frames on while
    keeping the connection up: what a publisher sees when the broker blocks it (a memory or disk
    alarm) or the network stalls. Nothing is dropped; held frames are simply never delivered."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.stalled = False
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _connect(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        broker_reader, broker_writer = await asyncio.open_connection(*self.target)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, from_broker: bool) -> None:
            while data := await reader.read(65536):
                while from_broker and self.stalled:
                    await asyncio.sleep(0.05)
                writer.write(data)
                await writer.drain()
            writer.close()

        await asyncio.gather(
            pipe(client_reader, broker_writer, False),
            pipe(broker_reader, client_writer, True),
            return_exceptions=True,
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


async def test_a_broker_that_stops_confirming_costs_no_event_a_try(
    runtime: Runtime, broker_ns: BrokerNamespace, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stall longer than every retry used to mark each row dead, for `outbox retry-dead` to revive.
    monkeypatch.setattr(relay_module, "PUBLISH_TIMEOUT_SECONDS", 0.3)
    monkeypatch.setattr(relay_module, "CONNECT_TIMEOUT_SECONDS", 0.5)
    broker = urlsplit(broker_ns.amqp_url)
    proxy = StallingProxy(broker.hostname or "127.0.0.1", broker.port or 5672)
    port = await proxy.start()
    proxied = broker._replace(netloc=f"{broker.username}:{broker.password}@127.0.0.1:{port}").geturl()
    rt = dataclasses.replace(
        runtime,
        settings=broker_ns.settings(
            runtime.settings, [], amqp_url=proxied, outbox_max_attempts=2, outbox_backoff_base_seconds=0.01
        ),
    )
    relay = Relay(rt)
    try:
        await relay.relay_once()  # connected, exchange declared
        proxy.stalled = True
        event_id = await enqueue_committed(rt, f"test.{unique}.created", {"k": "v"})
        with pytest.raises(BrokerUnavailableError, match="confirmed none"):
            await relay.relay_once()
        for _ in range(3):  # more stalled rounds than the row has tries; reconnecting stalls too
            with pytest.raises(BrokerUnavailableError):
                await relay.relay_once()
        row = await load_event(rt, event_id)
        assert row.attempts == 0 and row.dead_at is None and row.published_at is None

        proxy.stalled = False  # the alarm clears: the row goes out with no one's help
        await run_until_published(relay.relay_once, rt, event_id)
        assert (await load_event(rt, event_id)).attempts == 0
    finally:
        await relay.close()
        await proxy.close()


async def test_an_event_that_alone_times_out_while_others_are_confirmed_counts_a_try(
    runtime: Runtime, broker_ns: BrokerNamespace, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The broker is answering (it confirmed the other event): one event whose publish keeps timing
    # out must use up its tries, not hold the relay back for good as if the broker had stalled.
    rt = dataclasses.replace(
        runtime, settings=broker_ns.settings(runtime.settings, [], outbox_backoff_base_seconds=0.01)
    )
    relay = Relay(rt)
    stuck = await enqueue_committed(rt, f"test.{unique}.stuck", {"k": "v"})
    fine = await enqueue_committed(rt, f"test.{unique}.fine", {"k": "v"})
    publish = Relay._publish

    async def publish_or_time_out(self: Relay, exchange: Any, event: OutboxEvent) -> None:
        if event.id == stuck:
            raise TimeoutError
        await publish(self, exchange, event)

    monkeypatch.setattr(Relay, "_publish", publish_or_time_out)
    try:
        await run_until_published(relay.relay_once, rt, fine)
        await until(lambda: _attempts_at_least(rt, stuck, 1))
        row = await load_event(rt, stuck)
        assert row.published_at is None and row.last_error is not None
    finally:
        await relay.close()


async def _attempts_at_least(rt: Runtime, event_id: uuid.UUID, n: int) -> bool:
    return (await load_event(rt, event_id)).attempts >= n


# --- consumers on RabbitMQ -----------------------------------------------------------------------------


async def test_consumer_handles_an_event_once_when_it_is_delivered_twice(
    runtime: Runtime, broker_ns: BrokerNamespace, probe: aio_pika.abc.AbstractChannel, unique: str
) -> None:
    name = f"test-once-{unique}"
    rt = dataclasses.replace(runtime, settings=broker_ns.settings(runtime.settings, [name]))
    registry = ConsumerRegistry()
    recorder = Recorder()
    registry.add(name, (f"test.{unique}.#",), recorder)
    connection = await aio_pika.connect_robust(broker_ns.amqp_url)
    consumers = BrokerConsumers(rt, connection, registry.all())
    relay = Relay(rt)
    try:
        await consumers.start()
        event_id = await enqueue_committed(rt, f"test.{unique}.paid", {"amount": 100})
        await run_until_published(relay.relay_once, rt, event_id)
        await until(lambda: followups_at_least(rt, event_id, 1))

        # The relay died after the broker confirmed but before its commit: the row goes out again.
        async with rt.db.sessionmaker() as session, session.begin():
            await session.execute(
                update(OutboxEvent).where(OutboxEvent.id == event_id).values(published_at=None)
            )
        await run_until_published(relay.relay_once, rt, event_id)
        queue = Topology(rt.settings).queue(name)
        await until(lambda: queue_is_drained(probe, queue))
        await consumers.stop()  # waits for the handler in flight

        assert [c[0] for c in recorder.calls] == [event_id]
        assert recorder.calls[0][1] == {"amount": 100}
        assert await followups(rt, event_id) == 1
        assert await queue_is_drained(probe, queue)
    finally:
        await relay.close()
        await connection.close()


async def followups_at_least(rt: Runtime, event_id: uuid.UUID, n: int) -> bool:
    return await followups(rt, event_id) >= n


async def queue_count(channel: aio_pika.abc.AbstractChannel, queue: str) -> int:
    """Messages ready in `queue`. `channel` must not be robust: a robust channel answers a passive
    declare of a queue it knows from its cache, with the count of the first time."""
    declared = await channel.declare_queue(queue, passive=True)
    count = declared.declaration_result.message_count
    assert count is not None
    return count


async def queue_is_drained(channel: aio_pika.abc.AbstractChannel, queue: str) -> bool:
    return await queue_count(channel, queue) == 0


async def test_two_deliveries_at_once_run_the_handler_once(runtime: Runtime, unique: str) -> None:
    registry = ConsumerRegistry()
    recorder = Recorder()
    consumer = registry.add(f"test-race-{unique}", (f"test.{unique}",), recorder)
    event_id = uuid.uuid4()
    results = await asyncio.gather(*(handle_once(runtime, consumer, event_id, {"x": 1}) for _ in range(5)))
    assert sorted(results) == [False, False, False, False, True]
    assert len(recorder.calls) == 1
    assert await followups(runtime, event_id) == 1


async def test_failing_consumer_backs_off_then_dead_letters_and_retry_dead_hands_it_back(
    runtime: Runtime, broker_ns: BrokerNamespace, probe: aio_pika.abc.AbstractChannel, unique: str
) -> None:
    name = f"test-retry-{unique}"
    rt = dataclasses.replace(
        runtime,
        settings=broker_ns.settings(
            runtime.settings, [name], outbox_max_attempts=3, outbox_backoff_base_seconds=0.3
        ),
    )
    registry = ConsumerRegistry()
    recorder = Recorder(fail_times=3)
    registry.add(name, (f"test.{unique}.#",), recorder)
    connection = await aio_pika.connect_robust(broker_ns.amqp_url)
    consumers = BrokerConsumers(rt, connection, registry.all())
    relay = Relay(rt)
    try:
        await consumers.start()
        event_id = await enqueue_committed(rt, f"test.{unique}.failing", {"k": 1})
        await run_until_published(relay.relay_once, rt, event_id)

        async def dead_letter() -> DeadLetter | None:
            async with rt.db.sessionmaker() as session:
                return await session.scalar(select(DeadLetter).where(DeadLetter.event_id == event_id))

        async def has_dead_letter() -> bool:
            return await dead_letter() is not None

        await until(has_dead_letter)
        letter = await dead_letter()
        assert letter is not None
        assert (letter.consumer, letter.topic, letter.payload, letter.attempts) == (
            name,
            f"test.{unique}.failing",
            {"k": 1},
            3,
        )
        assert "handler failure #3" in letter.error and letter.retried_at is None
        # Three tries, waiting base * 2^(n-1) between them (per-level delay queues with a TTL).
        times = [c[2] for c in recorder.calls]
        assert len(times) == 3
        assert times[1] - times[0] >= 0.28 and times[2] - times[1] >= 0.58
        assert await followups(rt, event_id) == 0  # failed tries left no effect behind
        topology = Topology(rt.settings)
        assert await queue_is_drained(probe, topology.queue(name))
        assert await queue_is_drained(probe, topology.dead_queue(name))

        # The handler is fixed; retry-dead puts the message back into this consumer's queue.
        result = await retry_dead(rt, registry)
        assert result.letters >= 1
        await until(lambda: followups_at_least(rt, event_id, 1))
        assert len(recorder.calls) == 4
        letter = await dead_letter()
        assert letter is not None and letter.retried_at is not None
    finally:
        await consumers.stop()
        await relay.close()
        await connection.close()


async def test_undecodable_message_goes_to_the_broker_dead_letter_queue(
    runtime: Runtime, broker_ns: BrokerNamespace, probe: aio_pika.abc.AbstractChannel, unique: str
) -> None:
    name = f"test-poison-{unique}"
    rt = dataclasses.replace(runtime, settings=broker_ns.settings(runtime.settings, [name]))
    registry = ConsumerRegistry()
    recorder = Recorder()
    registry.add(name, (f"test.{unique}",), recorder)
    connection = await aio_pika.connect_robust(broker_ns.amqp_url)
    consumers = BrokerConsumers(rt, connection, registry.all())
    try:
        await consumers.start()
        exchange = await Topology(rt.settings).declare_exchange(probe)
        await exchange.publish(
            aio_pika.Message(body=b"not json", message_id="not-a-uuid"), routing_key=f"test.{unique}"
        )
        dead = Topology(rt.settings).dead_queue(name)

        async def dead_has_one() -> bool:
            return await queue_count(probe, dead) == 1

        await until(dead_has_one)
        assert recorder.calls == []
    finally:
        await consumers.stop()
        await connection.close()


# --- in-process drain (no broker) ----------------------------------------------------------------------


async def test_in_process_drain_handles_each_event_once_without_a_broker(
    runtime: Runtime, unique: str
) -> None:
    rt = with_settings(runtime, amqp_url="")
    registry = ConsumerRegistry()
    recorder = Recorder()
    registry.add(f"test-drain-{unique}", (f"test.{unique}.*",), recorder)
    ids = [await enqueue_committed(rt, f"test.{unique}.made", {"n": n}) for n in range(3)]
    await run_until_published(lambda: drain_once(rt, registry), rt, *ids)
    assert sorted(c[0] for c in recorder.calls) == sorted(ids)
    async with rt.db.sessionmaker() as session:
        handled = await session.scalar(
            select(func.count()).select_from(InboxRecord).where(InboxRecord.event_id.in_(ids))
        )
    assert handled == 3

    # The worker died after the handler committed but before it marked the row: no second run.
    async with rt.db.sessionmaker() as session, session.begin():
        await session.execute(update(OutboxEvent).where(OutboxEvent.id == ids[0]).values(published_at=None))
    await run_until_published(lambda: drain_once(rt, registry), rt, ids[0])
    assert len(recorder.calls) == 3
    assert await followups(rt, ids[0]) == 1


async def test_in_process_failures_back_off_then_die_and_retry_dead_revives(
    runtime: Runtime, unique: str
) -> None:
    rt = with_settings(runtime, amqp_url="", outbox_max_attempts=2, outbox_backoff_base_seconds=0.2)
    registry = ConsumerRegistry()
    recorder = Recorder(fail_times=2)
    registry.add(f"test-dead-{unique}", (f"test.{unique}",), recorder)
    event_id = await enqueue_committed(rt, f"test.{unique}", {})

    before = utcnow()
    while (await load_event(rt, event_id)).attempts == 0:
        await drain_once(rt, registry)
    row = await load_event(rt, event_id)
    assert (
        row.published_at is None
        and row.dead_at is None
        and row.last_error == "RuntimeError: handler failure #1"
    )
    assert before + timedelta(seconds=0.18) <= row.available_at <= utcnow() + timedelta(seconds=0.2)
    await drain_once(rt, registry)  # not due yet: not tried again
    assert len(recorder.calls) == 1

    await asyncio.sleep(0.2)
    while (await load_event(rt, event_id)).attempts == 1:
        await drain_once(rt, registry)
    row = await load_event(rt, event_id)
    assert row.dead_at is not None and row.published_at is None and row.attempts == 2
    await drain_once(rt, registry)  # dead rows are left alone
    assert len(recorder.calls) == 2

    result = await retry_dead(rt, registry)
    assert result.events >= 1
    row = await load_event(rt, event_id)
    assert row.dead_at is None and row.attempts == 0
    await run_until_published(lambda: drain_once(rt, registry), rt, event_id)
    assert len(recorder.calls) == 3
    assert await followups(rt, event_id) == 1


# --- commands ------------------------------------------------------------------------------------------


async def test_outbox_status_reports_backlog_oldest_age_and_dead(runtime: Runtime, unique: str) -> None:
    env = worker_env(runtime.settings, amqp_url="")

    async def stats_now() -> OutboxStats:
        async with runtime.db.sessionmaker() as session:
            return await outbox_stats(session)

    first = await stats_now()
    hour_ago = utcnow() - timedelta(hours=1)
    pending = [uuid.uuid4(), uuid.uuid4()]
    dead = uuid.uuid4()
    async with runtime.db.sessionmaker() as session, session.begin():
        # Due in the future, so no worker or drain of another test picks them up meanwhile.
        later = utcnow() + timedelta(hours=1)
        await session.execute(
            insert(OutboxEvent),
            [
                {
                    "id": pending[0],
                    "topic": f"test.{unique}",
                    "payload": {},
                    "created_at": hour_ago,
                    "available_at": later,
                },
                {"id": pending[1], "topic": f"test.{unique}", "payload": {}, "available_at": later},
                {"id": dead, "topic": f"test.{unique}", "payload": {}, "dead_at": utcnow(), "attempts": 8},
            ],
        )
        letter = await session.scalar(
            insert(DeadLetter)
            .values(
                consumer=f"test-{unique}",
                event_id=uuid.uuid4(),
                topic=f"test.{unique}",
                payload={},
                error="boom",
                attempts=8,
            )
            .returning(DeadLetter.id)
        )
    try:
        code, out, err = await run_cli(env, "outbox", "status", "--json")
        assert code == 0, err
        second = json.loads(out)
        assert second["backlog"] == first.backlog + 2
        assert second["dead_events"] == first.dead_events + 1
        assert second["dead_letters"] == first.dead_letters + 1
        assert second["oldest_age_seconds"] >= 3600

        # retry-dead revives the dead row; the dead letter's consumer is unknown here, so it stays and
        # the command says so with exit status 1.
        code, out, err = await run_cli(env, "outbox", "retry-dead")
        assert code == 1 and "dead letters that failed again: " in err
        revived = await load_event(runtime, dead)
        assert revived.dead_at is None and revived.attempts == 0
        async with runtime.db.sessionmaker() as session:
            kept = await session.get(DeadLetter, letter)
        assert kept is not None and kept.retried_at is None
    finally:
        async with runtime.db.sessionmaker() as session, session.begin():
            await session.execute(OutboxEvent.__table__.delete().where(OutboxEvent.id.in_([*pending, dead])))
            await session.execute(DeadLetter.__table__.delete().where(DeadLetter.id == letter))
    assert (await stats_now()).backlog == first.backlog


async def test_worker_stops_cleanly_on_sigterm(runtime: Runtime) -> None:
    proc = await start_worker(worker_env(runtime.settings, amqp_url="", log_level="INFO"))
    try:
        await wait_for_output(proc, "worker draining the outbox")
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0


async def test_worker_runs_periodic_jobs_beside_the_outbox_until_stopped(
    runtime: Runtime, unique: str
) -> None:
    rt = with_settings(runtime, amqp_url="", outbox_poll_interval_seconds=0.05)
    runs: list[float] = []

    async def job(_: Runtime) -> int:
        runs.append(time.monotonic())
        if len(runs) == 2:
            raise RuntimeError("a bad run is logged, not fatal")
        return 0

    recorder = Recorder()
    registry = ConsumerRegistry()
    registry.add(f"test-periodic-{unique}", (f"test.{unique}",), recorder)
    stop = asyncio.Event()
    worker = asyncio.create_task(
        run_worker(rt, registry, stop, [PeriodicJob(name=f"test-{unique}", interval_seconds=0.1, run=job)])
    )
    try:
        event_id = await enqueue_committed(rt, f"test.{unique}", {})
        await until(lambda: is_published(rt, event_id))

        async def ran_four_times() -> bool:
            return len(runs) >= 4

        await until(ran_four_times)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 10)
    assert [c[0] for c in recorder.calls] == [event_id]
    assert all(b - a >= 0.09 for a, b in itertools.pairwise(runs))
    count = len(runs)
    await asyncio.sleep(0.3)
    assert len(runs) == count  # stopped means stopped
