from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.ids import uuid7
from referloop.core.outbox.models import OutboxEvent


async def enqueue(session: AsyncSession, topic: str, payload: dict[str, Any]) -> uuid.UUID:
    """Write an event in the caller's transaction: it is published only if that transaction commits."""
    event_id = uuid7()
    await session.execute(insert(OutboxEvent).values(id=event_id, topic=topic, payload=payload))
    return event_id
