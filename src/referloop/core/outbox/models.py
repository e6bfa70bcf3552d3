from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, SmallInteger, String, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from referloop.core.db import Base, utcnow
from referloop.core.ids import uuid7


class OutboxEvent(Base):
    """An event to publish. `published_at` is set once the broker confirmed it (or, with no broker,
    once the in-process worker handled it); `dead_at` once it exhausted its retries."""

    __tablename__ = "outbox_events"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid7)
    topic: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)
    available_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(default=None)
    dead_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text, default=None)

    __table_args__ = (
        # The relay's work queue: only pending rows are indexed, so the index stays small.
        Index(
            "ix_outbox_events_pending",
            "available_at",
            postgresql_where=text("published_at IS NULL AND dead_at IS NULL"),
        ),
        # `outbox status` and /metrics count dead rows on every call: keep that off the history.
        Index(
            "ix_outbox_events_dead",
            "dead_at",
            postgresql_where=text("dead_at IS NOT NULL AND published_at IS NULL"),
        ),
    )


class InboxRecord(Base):
    """An event a consumer has handled: consumers insert here first, so a redelivery is a no-op."""

    __tablename__ = "inbox_records"

    consumer: Mapped[str] = mapped_column(String(100), primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    handled_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)


class DeadLetter(Base):
    """A message a consumer gave up on after its retries (broker mode), kept for `retry-dead`."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    consumer: Mapped[str] = mapped_column(String(100))
    event_id: Mapped[uuid.UUID]
    topic: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    error: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(SmallInteger)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)
    retried_at: Mapped[datetime | None] = mapped_column(default=None)
