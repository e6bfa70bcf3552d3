"""No broker configured: the worker drains the outbox table itself and calls the handlers directly.

A batch is claimed with `FOR UPDATE SKIP LOCKED` and its row locks are held while the handlers run, so
two workers never take the same row, and a worker that dies releases its rows at once (PostgreSQL rolls
its transaction back when the connection drops). Each handler commits on its own with its inbox record;
the row is marked published once every matching consumer has handled it. A row whose handler failed
backs off as a failed publish does and is retried as a whole: consumers that already handled it skip."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from referloop.core.outbox.consumers import ConsumerRegistry, handle_once
from referloop.core.outbox.models import OutboxEvent
from referloop.core.outbox.service import claim_pending, mark_published, record_failure

if TYPE_CHECKING:
    from referloop.runtime import Runtime

log = structlog.get_logger(__name__)


async def handle_event(rt: Runtime, registry: ConsumerRegistry, event: OutboxEvent) -> None:
    for consumer in registry.for_topic(event.topic):
        await handle_once(rt, consumer, event.id, dict(event.payload))


async def drain_once(rt: Runtime, registry: ConsumerRegistry) -> int:
    """Handle one batch of due rows; returns how many rows it claimed (0: nothing was due)."""
    settings = rt.settings
    limit = asyncio.Semaphore(settings.worker_concurrency)

    async def run(event: OutboxEvent) -> None:
        async with limit:
            await handle_event(rt, registry, event)

    async with rt.db.sessionmaker() as session, session.begin():
        events = await claim_pending(session, settings.outbox_batch_size)
        if not events:
            return 0
        results = await asyncio.gather(*(run(e) for e in events), return_exceptions=True)
        for event, result in zip(events, results, strict=True):
            if isinstance(result, BaseException):
                record_failure(event, result, settings)
                log.warning(
                    "outbox event failed",
                    event_id=str(event.id),
                    topic=event.topic,
                    attempts=event.attempts,
                    dead=event.dead_at is not None,
                    error=event.last_error,
                )
        await mark_published(session, [e.id for e, r in zip(events, results, strict=True) if r is None])
    return len(events)
