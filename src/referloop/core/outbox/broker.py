"""RabbitMQ topology and the consumer side of the worker.

Names, for namespace `ns` (setting `amqp_namespace`) and consumer `c`:

- `ns.events`: durable topic exchange; the relay publishes each outbox event with routing key = topic.
- `ns.c`: the consumer's durable queue, bound to `ns.events` with each of its topic patterns. Messages it
  rejects (undecodable, or a dead letter the database would not take) go to `ns.dead` → `ns.c.dead`.
- `ns.c.retry.<ms>ms`: one delay queue per retry level with a per-queue TTL. A failed message is
  republished there (header `x-referloop-attempt` counts failures) and acked; when its TTL runs out,
  RabbitMQ dead-letters it back into `ns.c`. One queue per delay keeps a long wait from blocking a short
  one. After `outbox_max_attempts` failures the message is stored in `dead_letters` and acked."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import aio_pika
import orjson
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
    ExchangeType,
)

from referloop.config import Settings
from referloop.core.outbox.consumers import Consumer, handle_once, store_dead_letter
from referloop.core.outbox.service import backoff_seconds, short_error

if TYPE_CHECKING:
    from referloop.runtime import Runtime

log = structlog.get_logger(__name__)

ATTEMPT_HEADER = "x-referloop-attempt"
PUBLISH_TIMEOUT_SECONDS = 10.0
# Connecting (TCP, AMQP handshake, first channel) must answer within this, else the broker counts as down.
CONNECT_TIMEOUT_SECONDS = 15.0
STOP_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class Topology:
    settings: Settings

    @property
    def namespace(self) -> str:
        return self.settings.amqp_namespace

    @property
    def events_exchange(self) -> str:
        return f"{self.namespace}.events"

    @property
    def dead_exchange(self) -> str:
        return f"{self.namespace}.dead"

    def queue(self, consumer: str) -> str:
        return f"{self.namespace}.{consumer}"

    def dead_queue(self, consumer: str) -> str:
        return f"{self.namespace}.{consumer}.dead"

    def retry_delays_ms(self) -> list[int]:
        """Delay before retry n (n = 1 .. max_attempts-1). Fixed per queue, hence no jitter."""
        return [
            max(1, round(backoff_seconds(n, self.settings, jitter=False) * 1000))
            for n in range(1, self.settings.outbox_max_attempts)
        ]

    def retry_queue(self, consumer: str, delay_ms: int) -> str:
        # The delay is in the name: a queue's TTL cannot change once declared.
        return f"{self.namespace}.{consumer}.retry.{delay_ms}ms"

    def all_queues(self, consumer: str) -> list[str]:
        return [
            self.queue(consumer),
            self.dead_queue(consumer),
            *(self.retry_queue(consumer, d) for d in self.retry_delays_ms()),
        ]

    def _queue_args(self, *, dead_letter_exchange: str, dead_letter_key: str) -> dict[str, Any]:
        args: dict[str, Any] = {
            "x-dead-letter-exchange": dead_letter_exchange,
            "x-dead-letter-routing-key": dead_letter_key,
        }
        if self.settings.amqp_quorum_queues:
            # Dead-lettering of quorum queues is at-most-once unless asked; a retry must not vanish.
            args |= {
                "x-queue-type": "quorum",
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            }
        return args

    async def declare_exchange(self, channel: AbstractChannel) -> aio_pika.abc.AbstractExchange:
        return await channel.declare_exchange(self.events_exchange, ExchangeType.TOPIC, durable=True)

    async def declare_consumer(self, channel: AbstractChannel, consumer: Consumer) -> AbstractQueue:
        """Declare (idempotently) everything one consumer needs; returns its main queue."""
        events = await self.declare_exchange(channel)
        dead = await channel.declare_exchange(self.dead_exchange, ExchangeType.DIRECT, durable=True)
        main_name = self.queue(consumer.name)
        dead_queue = await channel.declare_queue(
            self.dead_queue(consumer.name),
            durable=True,
            arguments={"x-queue-type": "quorum"} if self.settings.amqp_quorum_queues else None,
        )
        await dead_queue.bind(dead, routing_key=main_name)
        for delay_ms in self.retry_delays_ms():
            await channel.declare_queue(
                self.retry_queue(consumer.name, delay_ms),
                durable=True,
                arguments={
                    "x-message-ttl": delay_ms,
                    **self._queue_args(dead_letter_exchange="", dead_letter_key=main_name),
                },
            )
        queue = await channel.declare_queue(
            main_name,
            durable=True,
            arguments=self._queue_args(dead_letter_exchange=self.dead_exchange, dead_letter_key=main_name),
        )
        for pattern in consumer.patterns:
            await queue.bind(events, routing_key=pattern)
        return queue

    async def delete_all(self, channel: AbstractChannel, consumers: list[str]) -> None:
        """Remove a namespace's exchanges and queues (tests, teardown of a staging namespace)."""
        for name in consumers:
            for queue in self.all_queues(name):
                await channel.queue_delete(queue)
        for exchange in (self.events_exchange, self.dead_exchange):
            await channel.exchange_delete(exchange)


def event_message(
    event_id: uuid.UUID, topic: str, payload: dict[str, Any], *, failures: int = 0, timestamp: Any = None
) -> aio_pika.Message:
    """The wire form of an outbox event: JSON payload, message_id = event id, type = topic."""
    return aio_pika.Message(
        body=orjson.dumps(payload),
        message_id=str(event_id),
        type=topic,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers={ATTEMPT_HEADER: failures} if failures else None,
        timestamp=timestamp,
    )


class BrokerConsumers:
    """Runs every registered consumer on its own channel; `stop()` lets in-flight handlers finish."""

    def __init__(self, rt: Runtime, connection: AbstractConnection, consumers: list[Consumer]) -> None:
        self.rt = rt
        self.topology = Topology(rt.settings)
        self.connection = connection
        self.consumers = consumers
        self._subscriptions: list[tuple[AbstractQueue, str]] = []
        self._channels: list[AbstractChannel] = []
        self._inflight: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> None:
        for consumer in self.consumers:
            # Returned messages raise: a retry published to a missing delay queue must not vanish.
            channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
            await channel.set_qos(prefetch_count=self.rt.settings.worker_concurrency)
            queue = await self.topology.declare_consumer(channel, consumer)
            tag = await queue.consume(partial(self._on_message, consumer, channel))
            self._channels.append(channel)
            self._subscriptions.append((queue, tag))
            log.info(
                "consumer started", consumer=consumer.name, queue=queue.name, patterns=list(consumer.patterns)
            )

    async def stop(self) -> None:
        for queue, tag in self._subscriptions:
            try:
                await queue.cancel(tag)
            except Exception as exc:  # the channel may already be gone; the broker requeues unacked
                log.warning("consumer cancel failed", queue=queue.name, error=short_error(exc))
        self._subscriptions.clear()
        try:
            await asyncio.wait_for(self._idle.wait(), STOP_GRACE_SECONDS)
        except TimeoutError:
            # Their messages are not acked: closing the channel hands them to another worker.
            log.warning("handlers still running at shutdown", count=len(self._inflight))
        for channel in self._channels:
            if not channel.is_closed:
                await channel.close()
        self._channels.clear()

    async def _on_message(
        self, consumer: Consumer, channel: AbstractChannel, message: AbstractIncomingMessage
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
            self._idle.clear()
        try:
            await self._process(consumer, channel, message)
        finally:
            if task is not None:
                self._inflight.discard(task)
                if not self._inflight:
                    self._idle.set()

    async def _process(
        self, consumer: Consumer, channel: AbstractChannel, message: AbstractIncomingMessage
    ) -> None:
        try:
            event_id = uuid.UUID(message.message_id or "")
            topic = message.type or message.routing_key or ""
            payload = orjson.loads(message.body)
            if not isinstance(payload, dict):
                raise TypeError("payload is not a JSON object")
        except (ValueError, TypeError) as exc:
            # Retrying cannot fix it: straight to the broker's dead-letter queue.
            log.error(
                "undecodable message",
                consumer=consumer.name,
                message_id=message.message_id,
                error=short_error(exc),
            )
            await message.reject(requeue=False)
            return
        raw_failures = (message.headers or {}).get(ATTEMPT_HEADER, 0)
        failures = raw_failures if isinstance(raw_failures, int) else 0
        try:
            handled = await handle_once(self.rt, consumer, event_id, payload)
        except Exception as exc:
            await self._failed(consumer, channel, message, event_id, topic, payload, failures + 1, exc)
            return
        if not handled:
            log.info("duplicate event skipped", consumer=consumer.name, event_id=str(event_id))
        await message.ack()

    async def _failed(
        self,
        consumer: Consumer,
        channel: AbstractChannel,
        message: AbstractIncomingMessage,
        event_id: uuid.UUID,
        topic: str,
        payload: dict[str, Any],
        failures: int,
        exc: Exception,
    ) -> None:
        settings = self.rt.settings
        error = short_error(exc)
        if failures >= settings.outbox_max_attempts:
            log.error(
                "event dead-lettered",
                consumer=consumer.name,
                event_id=str(event_id),
                topic=topic,
                attempts=failures,
                error=error,
            )
            try:
                await store_dead_letter(
                    self.rt,
                    consumer=consumer.name,
                    event_id=event_id,
                    topic=topic,
                    payload=payload,
                    error=error,
                    attempts=failures,
                )
            except Exception as db_exc:
                log.error(
                    "dead letter not stored; rejecting to the broker's dead-letter queue",
                    consumer=consumer.name,
                    event_id=str(event_id),
                    error=short_error(db_exc),
                )
                await message.reject(requeue=False)
                return
            await message.ack()
            return
        delay_ms = self.topology.retry_delays_ms()[failures - 1]
        log.warning(
            "event failed; retrying",
            consumer=consumer.name,
            event_id=str(event_id),
            topic=topic,
            attempt=failures,
            retry_in_ms=delay_ms,
            error=error,
        )
        try:
            # Confirmed before the ack: a crash in between redelivers, and the inbox absorbs a double.
            await channel.default_exchange.publish(
                event_message(event_id, topic, payload, failures=failures, timestamp=message.timestamp),
                routing_key=self.topology.retry_queue(consumer.name, delay_ms),
                timeout=PUBLISH_TIMEOUT_SECONDS,
            )
        except Exception as pub_exc:
            log.error(
                "retry not scheduled; requeueing",
                consumer=consumer.name,
                event_id=str(event_id),
                error=short_error(pub_exc),
            )
            await message.nack(requeue=True)
            return
        await message.ack()
