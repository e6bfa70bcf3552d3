"""The outbox relay: moves committed outbox rows to RabbitMQ.

Each batch is one transaction: claim due rows with `FOR UPDATE SKIP LOCKED`, publish them all with
publisher confirms, then mark the confirmed ones published and back off the others. A crash after the
broker confirmed but before the commit republishes those rows later: consumers' inbox makes that
harmless. A broker that is down is not the events' fault, so such a batch is released without counting
a try (else a long outage would exhaust every row's tries). Nor is a broker that stops confirming
(a memory or disk alarm blocks publishers while the connection stays up): a publish that timed out
is not counted either when no publish of its batch was confirmed; the relay reconnects after a pause."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from referloop.core.outbox.broker import (
    CONNECT_TIMEOUT_SECONDS,
    PUBLISH_TIMEOUT_SECONDS,
    Topology,
    event_message,
)
from referloop.core.outbox.models import OutboxEvent
from referloop.core.outbox.service import claim_pending, mark_published, record_failure, short_error

if TYPE_CHECKING:
    from referloop.runtime import Runtime

log = structlog.get_logger(__name__)


class BrokerUnavailableError(Exception):
    """The connection to RabbitMQ is gone: nothing was counted against the claimed rows."""


class Relay:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.topology = Topology(rt.settings)
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None

    async def _ready_exchange(self) -> AbstractExchange:
        """A plain (not robust) connection, so that a closed one is plainly closed; we reconnect here."""
        try:
            # Bounded as a whole: aio-pika's own connect timeout does not cover the AMQP handshake, and
            # a broker that accepts the socket but never answers (one out of file handles does that)
            # would hold the relay forever, silently.
            return await asyncio.wait_for(self._connect(), CONNECT_TIMEOUT_SECONDS)
        except Exception as exc:
            raise BrokerUnavailableError(short_error(exc) or type(exc).__name__) from exc

    async def _connect(self) -> AbstractExchange:
        if self._connection is None or self._connection.is_closed:
            self._channel = self._exchange = None
            self._connection = await aio_pika.connect(self.rt.settings.amqp_url)
        if self._channel is None or self._channel.is_closed or self._exchange is None:
            self._channel = await self._connection.channel(publisher_confirms=True)
            # Declared on every new channel: an exchange deleted by mistake comes back by itself.
            self._exchange = await self.topology.declare_exchange(self._channel)
        return self._exchange

    async def _publish(self, exchange: AbstractExchange, event: OutboxEvent) -> None:
        # mandatory=False: a topic nobody subscribed to yet is not an error; the row stays as history.
        await exchange.publish(
            event_message(event.id, event.topic, event.payload, timestamp=event.created_at),
            routing_key=event.topic,
            mandatory=False,
            timeout=PUBLISH_TIMEOUT_SECONDS,
        )

    async def relay_once(self) -> int:
        """Publish one batch; returns how many rows it claimed (0: nothing was due)."""
        exchange = await self._ready_exchange()
        settings = self.rt.settings
        async with self.rt.db.sessionmaker() as session, session.begin():
            events = await claim_pending(session, settings.outbox_batch_size)
            if not events:
                return 0
            results = await asyncio.gather(
                *(self._publish(exchange, e) for e in events), return_exceptions=True
            )
            failed = [(e, r) for e, r in zip(events, results, strict=True) if isinstance(r, BaseException)]
            if failed and self._connection is not None and self._connection.is_closed:
                # Leaving the block by raising rolls back: the rows stay as they were, locks released.
                raise BrokerUnavailableError(short_error(failed[0][1]))
            published = [e.id for e, r in zip(events, results, strict=True) if r is None]
            await mark_published(session, published)
            # Every publish timed out: the broker stopped confirming, which is no event's fault. Some
            # were confirmed: the broker is answering, and an event that still timed out counts a try
            # (else one such event, always first in line, would stall the relay for good).
            stalled = (
                [e for e, _ in failed]
                if not published and all(isinstance(exc, TimeoutError) for _, exc in failed)
                else []
            )
            failed = [] if stalled else failed
            for event, exc in failed:
                record_failure(event, exc, settings)
                log.warning(
                    "outbox publish failed",
                    event_id=str(event.id),
                    topic=event.topic,
                    attempts=event.attempts,
                    dead=event.dead_at is not None,
                    error=event.last_error,
                )
        if stalled:
            # Committed above: the confirmed rows are published and the stalled ones untouched, due at once.
            await self.close()
            raise BrokerUnavailableError(f"the broker confirmed none of {len(stalled)} publish(es) in time")
        return len(events)

    async def close(self) -> None:
        connection, self._connection, self._channel, self._exchange = self._connection, None, None, None
        if connection is not None and not connection.is_closed:
            # Bounded: a stalled broker never answers the close either; the socket goes with the object.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), CONNECT_TIMEOUT_SECONDS)
