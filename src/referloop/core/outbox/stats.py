from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True)
class OutboxStats:
    backlog: int  # events not yet published (due now or waiting out a backoff)
    oldest_age_seconds: float  # age of the oldest of those; 0 when there is none
    dead_events: int  # outbox rows that exhausted their publish (or in-process handling) tries
    dead_letters: int  # messages consumers gave up on, not yet retried

    @property
    def dead(self) -> int:
        return self.dead_events + self.dead_letters


async def outbox_stats(session: AsyncSession) -> OutboxStats:
    # Each count matches a partial index's predicate, so published history is never scanned.
    pending = (
        await session.execute(
            text(
                "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)"
                " FROM outbox_events WHERE published_at IS NULL AND dead_at IS NULL"
            )
        )
    ).one()
    dead_events = (
        await session.execute(
            text("SELECT count(*) FROM outbox_events WHERE dead_at IS NOT NULL AND published_at IS NULL")
        )
    ).scalar_one()
    dead_letters = (
        await session.execute(text("SELECT count(*) FROM dead_letters WHERE retried_at IS NULL"))
    ).scalar_one()
    return OutboxStats(
        backlog=int(pending[0]),
        oldest_age_seconds=float(pending[1]),
        dead_events=int(dead_events),
        dead_letters=int(dead_letters),
    )
