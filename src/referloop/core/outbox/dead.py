"""`referloop outbox retry-dead`: give dead outbox rows and consumers' dead letters another go."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import aio_pika
import structlog
from sqlalchemy import func, select, update

from referloop.core.outbox.broker import PUBLISH_TIMEOUT_SECONDS, Topology, event_message
from referloop.core.outbox.consumers import ConsumerRegistry, handle_once
from referloop.core.outbox.models import DeadLetter
from referloop.core.outbox.service import revive_dead_events, short_error

if TYPE_CHECKING:
    from referloop.runtime import Runtime

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RetryDeadResult:
    events: int  # dead outbox rows made pending again
    letters: int  # dead letters handed back to their consumer
    failed: int  # dead letters that could not be handed back (kept for the next try)


async def retry_dead(rt: Runtime, registry: ConsumerRegistry) -> RetryDeadResult:
    """Dead outbox rows become pending with fresh tries. Each dead letter goes back to the one
    consumer that gave up on it: into its queue when a broker is configured (with a fresh retry count),
    else its handler runs here. Either way the inbox keeps a consumer from handling an event twice."""
    async with rt.db.sessionmaker() as session, session.begin():
        events = await revive_dead_events(session)

    async with rt.db.sessionmaker() as session, session.begin():
        letters = list(
            await session.scalars(
                select(DeadLetter)
                .where(DeadLetter.retried_at.is_(None))
                .order_by(DeadLetter.id)
                .with_for_update(skip_locked=True)
            )
        )
        done: list[int] = []
        if letters and rt.settings.amqp_url:
            topology = Topology(rt.settings)
            connection = await aio_pika.connect(rt.settings.amqp_url, timeout=PUBLISH_TIMEOUT_SECONDS)
            try:
                # Returned messages raise: a consumer whose queue is gone keeps its dead letter.
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                for letter in letters:
                    try:
                        await channel.default_exchange.publish(
                            event_message(letter.event_id, letter.topic, letter.payload),
                            routing_key=topology.queue(letter.consumer),
                            timeout=PUBLISH_TIMEOUT_SECONDS,
                        )
                        done.append(letter.id)
                    except Exception as exc:
                        log.error(
                            "dead letter not requeued",
                            id=letter.id,
                            consumer=letter.consumer,
                            error=short_error(exc),
                        )
                        if channel.is_closed:
                            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            finally:
                await connection.close()
        else:
            for letter in letters:
                consumer = registry.get(letter.consumer)
                if consumer is None:
                    log.error("dead letter of an unknown consumer", id=letter.id, consumer=letter.consumer)
                    continue
                try:
                    await handle_once(rt, consumer, letter.event_id, dict(letter.payload))
                    done.append(letter.id)
                except Exception as exc:
                    letter.error = short_error(exc)
                    log.error(
                        "dead letter failed again", id=letter.id, consumer=letter.consumer, error=letter.error
                    )
        if done:
            await session.execute(
                update(DeadLetter).where(DeadLetter.id.in_(done)).values(retried_at=func.now())
            )
    return RetryDeadResult(events=events, letters=len(done), failed=len(letters) - len(done))
