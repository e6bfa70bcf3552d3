"""Event consumers: a registry of `topic pattern -> handler`, and the one way a handler runs.

A handler is `async def handler(session, rt, event_id, payload)`. It runs inside a transaction that first
records `(consumer, event_id)` in `inbox_records`; the record commits together with the handler's own
database effects, so an event delivered twice (a redelivery, a relay that crashed before marking a row,
a retried dead letter) is handled once. Domains register their handlers in their `tasks.py`; the worker
imports those modules (see `referloop.worker.TASK_MODULES`)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.faults import maybe_crash
from referloop.core.outbox.models import DeadLetter, InboxRecord

if TYPE_CHECKING:
    from referloop.runtime import Runtime

Handler = Callable[[AsyncSession, "Runtime", uuid.UUID, dict[str, Any]], Awaitable[None]]

# Fault point for crash tests: the event is taken but not yet recorded as handled (nothing sent yet).
FAULT_BEFORE_HANDLE = "consumer.before_handle"

_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,99}$")


def topic_matches(pattern: str, topic: str) -> bool:
    """AMQP topic semantics, so that in-process matching and broker bindings agree:
    `*` is exactly one dot-separated word, `#` is zero or more words."""
    return _match(pattern.split("."), topic.split("."))


def _match(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    return bool(words) and head in ("*", words[0]) and _match(rest, words[1:])


@dataclass(frozen=True)
class Consumer:
    name: str
    patterns: tuple[str, ...]
    handler: Handler

    def matches(self, topic: str) -> bool:
        return any(topic_matches(p, topic) for p in self.patterns)


class ConsumerRegistry:
    def __init__(self) -> None:
        self._consumers: dict[str, Consumer] = {}

    def add(self, name: str, patterns: tuple[str, ...], handler: Handler) -> Consumer:
        if not _NAME.match(name):
            raise ValueError(f"consumer name {name!r} must be lowercase letters, digits, '_', '.', '-'")
        if not patterns:
            raise ValueError(f"consumer {name!r} needs at least one topic pattern")
        existing = self._consumers.get(name)
        if existing is not None and existing.handler is not handler:
            raise ValueError(f"consumer {name!r} is already registered")
        consumer = Consumer(name, patterns, handler)
        self._consumers[name] = consumer
        return consumer

    def register(self, name: str, *patterns: str) -> Callable[[Handler], Handler]:
        """Decorator: `@registry.register("notifications.email", "notifications.email")`."""

        def decorate(handler: Handler) -> Handler:
            self.add(name, patterns, handler)
            return handler

        return decorate

    def remove(self, name: str) -> None:
        self._consumers.pop(name, None)

    def get(self, name: str) -> Consumer | None:
        return self._consumers.get(name)

    def all(self) -> list[Consumer]:
        return list(self._consumers.values())

    def for_topic(self, topic: str) -> list[Consumer]:
        return [c for c in self._consumers.values() if c.matches(topic)]


registry = ConsumerRegistry()
consumer = registry.register


async def handle_once(rt: Runtime, consumer: Consumer, event_id: uuid.UUID, payload: dict[str, Any]) -> bool:
    """Run `consumer` for one event unless it already handled it. Returns False for a duplicate.

    The inbox insert takes the row's key lock first: a concurrent second delivery of the same event
    waits on it, then finds the committed record and skips; after a rollback it handles the event."""
    async with rt.db.sessionmaker() as session, session.begin():
        inserted = await session.scalar(
            pg_insert(InboxRecord)
            .values(consumer=consumer.name, event_id=event_id)
            .on_conflict_do_nothing(index_elements=["consumer", "event_id"])
            .returning(InboxRecord.event_id)
        )
        if inserted is None:
            return False
        maybe_crash(rt.settings, FAULT_BEFORE_HANDLE)
        await consumer.handler(session, rt, event_id, payload)
    return True


async def store_dead_letter(
    rt: Runtime,
    *,
    consumer: str,
    event_id: uuid.UUID,
    topic: str,
    payload: dict[str, Any],
    error: str,
    attempts: int,
) -> None:
    async with rt.db.sessionmaker() as session, session.begin():
        await session.execute(
            insert(DeadLetter).values(
                consumer=consumer,
                event_id=event_id,
                topic=topic,
                payload=payload,
                error=error,
                attempts=attempts,
            )
        )
