"""Writing events, and the bookkeeping the relay and the in-process drain share: claim, mark, back off."""

from __future__ import annotations

import functools
import json
import random
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import ARRAY, Insert, Table, Text, bindparam, cast, func, insert, literal, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.config import Settings
from referloop.core.db import utcnow
from referloop.core.ids import uuid7
from referloop.core.outbox.models import OutboxEvent

_ERROR_MAX_CHARS = 2000


def _unnest(name: str, column: Any) -> Any:
    return func.unnest(cast(bindparam(name), ARRAY(column.type)))


_OUTBOX = OutboxEvent.__table__
assert isinstance(_OUTBOX, Table)
# The events as arrays, one row per element: one statement shape whatever the number of events, so
# SQLAlchemy compiles it once (a multi-row VALUES is never cached: it was compiled on every call).
_INSERT_EVENTS = insert(_OUTBOX).from_select(
    ["id", "topic", "payload", "created_at", "available_at", "attempts"],
    select(
        _unnest("outbox_ids", _OUTBOX.c.id),
        _unnest("outbox_topics", _OUTBOX.c.topic),
        cast(func.unnest(cast(bindparam("outbox_payloads"), ARRAY(Text))), JSONB),
        _unnest("outbox_times", _OUTBOX.c.created_at).label("created_at"),
        _unnest("outbox_times", _OUTBOX.c.available_at).label("available_at"),
        literal(0),
    ),
    include_defaults=False,
)


@functools.lru_cache(maxsize=64)
def _with_caller_write(with_write: Insert) -> Insert:
    return _INSERT_EVENTS.add_cte(with_write.cte("caller_write"))


async def enqueue(session: AsyncSession, topic: str, payload: dict[str, Any]) -> uuid.UUID:
    """Write an event in the caller's transaction: it is published only if that transaction commits."""
    (event_id,) = await enqueue_many(session, [(topic, payload)])
    return event_id


async def enqueue_many(
    session: AsyncSession,
    events: Sequence[tuple[str, dict[str, Any]]],
    *,
    with_write: Insert | None = None,
    with_write_params: dict[str, Any] | None = None,
) -> list[uuid.UUID]:
    """Write several events (topic, payload), in order, with one INSERT in the caller's transaction.

    `with_write`: the caller's own INSERT (the row the events announce), run in the same statement
    as a data-modifying CTE, so that a state change and its events cost one round trip. PostgreSQL
    runs it to completion even though nothing reads it; give it every column that has a Python-side
    default (SQLAlchemy cannot compute those inside a CTE). `with_write_params`: its bound values,
    when `with_write` is a statement made once and reused (its bindparams named apart from
    "outbox_*"): the whole statement is then reused too, and SQLAlchemy skips rebuilding its cache key."""
    ids = [uuid7() for _ in events]
    if not events:
        if with_write is not None:
            await session.execute(with_write)
        return ids
    # Every column with a Python-side default is given here: SQLAlchemy leaves them out (NULL) in a
    # statement that carries a CTE. A microsecond apart, so that the relay (which claims by
    # available_at) sees them in the order given, as when each had an INSERT of its own.
    now = utcnow()
    times = [now + timedelta(microseconds=n) for n in range(len(events))]
    params = {
        "outbox_ids": ids,
        "outbox_topics": [topic for topic, _ in events],
        "outbox_payloads": [json.dumps(payload) for _, payload in events],
        "outbox_times": times,
    }
    stmt = _INSERT_EVENTS
    if with_write is not None and with_write_params is not None:
        stmt = _with_caller_write(with_write)
        params.update(with_write_params)
    elif with_write is not None:
        stmt = stmt.add_cte(with_write.cte("caller_write"))
    await session.execute(stmt, params)
    return ids


def backoff_seconds(attempt: int, settings: Settings, *, jitter: bool = True) -> float:
    """Delay before try number `attempt + 1` after `attempt` failures: base * 2^(attempt-1), capped.

    Up to 10 % jitter (downwards) spreads out rows that failed together, e.g. during a broker outage."""
    delay = min(
        settings.outbox_backoff_max_seconds,
        settings.outbox_backoff_base_seconds * float(2 ** max(0, attempt - 1)),
    )
    return delay * (1 - random.random() * 0.1) if jitter else delay


def short_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_ERROR_MAX_CHARS]


async def claim_pending(session: AsyncSession, limit: int) -> list[OutboxEvent]:
    """Lock up to `limit` due rows for the rest of the caller's transaction. Rows another worker holds
    are skipped, so any number of relays share the table without handing out an event twice."""
    rows = await session.scalars(
        select(OutboxEvent)
        .where(
            OutboxEvent.published_at.is_(None),
            OutboxEvent.dead_at.is_(None),
            OutboxEvent.available_at <= func.now(),
        )
        .order_by(OutboxEvent.available_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(rows)


async def mark_published(session: AsyncSession, ids: list[uuid.UUID]) -> None:
    if ids:
        await session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.id.in_(ids))
            .values(published_at=func.now())
            .execution_options(synchronize_session=False)
        )


def record_failure(event: OutboxEvent, exc: BaseException, settings: Settings) -> None:
    """Count a failed try on a claimed row: back off, or give up after `outbox_max_attempts`."""
    event.attempts += 1
    event.last_error = short_error(exc)
    now = utcnow()
    if event.attempts >= settings.outbox_max_attempts:
        event.dead_at = now
    else:
        event.available_at = now + timedelta(seconds=backoff_seconds(event.attempts, settings))


async def revive_dead_events(session: AsyncSession) -> int:
    """Give every dead outbox row a fresh set of tries (`referloop outbox retry-dead`)."""
    result = await session.execute(
        update(OutboxEvent)
        .where(OutboxEvent.dead_at.is_not(None), OutboxEvent.published_at.is_(None))
        .values(dead_at=None, attempts=0, available_at=func.now())
        .returning(OutboxEvent.id)
    )
    return len(result.all())
