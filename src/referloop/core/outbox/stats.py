from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True)
class OutboxStats:
    backlog: int
    oldest_age_seconds: float
    dead: int


async def outbox_stats(session: AsyncSession) -> OutboxStats:
    row = (
        await session.execute(
            text(
                "SELECT count(*) FILTER (WHERE published_at IS NULL AND dead_at IS NULL),"
                " coalesce(extract(epoch FROM now() - min(created_at)"
                "   FILTER (WHERE published_at IS NULL AND dead_at IS NULL)), 0),"
                " count(*) FILTER (WHERE dead_at IS NOT NULL)"
                " FROM outbox_events WHERE published_at IS NULL"
            )
        )
    ).one()
    dead_letters = (
        await session.execute(text("SELECT count(*) FROM dead_letters WHERE retried_at IS NULL"))
    ).scalar_one()
    return OutboxStats(backlog=int(row[0]), oldest_age_seconds=float(row[1]), dead=int(row[2]) + int(dead_letters))
