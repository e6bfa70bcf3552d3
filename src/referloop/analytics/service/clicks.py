"""The click job: `clicks` -> `analytics_funnel_daily`, incrementally, by a high-water mark.

`rollup_clicks` reads the clicks stored in [watermark, now - settle) (at most `max_span` at a time),
adds them to the daily rows in one statement, and moves the watermark, in one transaction that holds
the watermark row's lock: several workers may run the job, one at a time does the work (the others
skip, SKIP LOCKED). The settle delay leaves time for the click flusher: a click's `clicked_at` is when
the redirect answered, and it reaches PostgreSQL a few seconds later (or, after a flusher crash, once
its batch has been reclaimed, `click_claim_idle_seconds`).

A click stored later still (the worker was down for a while) has a time below the watermark and is
missed by the incremental job. `recount_clicks` repairs that: for the last few whole days below the
watermark it replaces the days' click counts with a fresh count (idempotent: it sets, never adds).

Clicks carry no campaign: a click is credited to the campaign that was live for its program at the
click's minute (attached to the program, activated and not ended then, inside its window), chosen by
the same order as `referrals.service.campaigns.choose_campaign` (priority, then latest start, then
greatest id), but without the referrer's eligibility, which a visitor's click does not know. Pauses
are not recorded, so a click during a pause still counts for the campaign."""

from __future__ import annotations

import time as time_module
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.db import utcnow
from referloop.runtime import Runtime

WATERMARK = "clicks"

_AGGREGATE = """
WITH k AS (
    SELECT program_id, member_id, is_bot, clicked_at FROM clicks
    WHERE clicked_at >= :lo AND clicked_at < :hi
), slots AS (
    SELECT DISTINCT program_id, date_trunc('minute', clicked_at) AS m FROM k
), won AS (
    SELECT s.program_id, s.m, p.university_id, c.id AS campaign_id
    FROM slots s
    JOIN programs p ON p.id = s.program_id
    LEFT JOIN LATERAL (
        SELECT ca.id FROM campaign_programs cp JOIN campaigns ca ON ca.id = cp.campaign_id
        WHERE cp.program_id = s.program_id
          AND ca.state <> 'draft'
          AND ca.activated_at IS NOT NULL AND ca.activated_at <= s.m + interval '1 minute'
          AND ca.starts_at <= s.m + interval '1 minute'
          AND (ca.ends_at IS NULL OR ca.ends_at > s.m)
          AND (ca.ended_at IS NULL OR ca.ended_at > s.m)
        ORDER BY ca.priority DESC, ca.starts_at DESC, ca.id DESC
        LIMIT 1
    ) c ON true
), agg AS (
    SELECT (k.clicked_at AT TIME ZONE 'UTC')::date AS day, k.program_id, w.campaign_id,
           k.member_id AS referrer_id, w.university_id,
           count(*) FILTER (WHERE NOT k.is_bot) AS clicks, count(*) FILTER (WHERE k.is_bot) AS bot_clicks
    FROM k JOIN won w ON w.program_id = k.program_id AND w.m = date_trunc('minute', k.clicked_at)
    GROUP BY 1, 2, 3, 4, 5
), written AS (
    INSERT INTO analytics_funnel_daily (day, program_id, campaign_id, referrer_id, university_id, clicks, bot_clicks)
    SELECT * FROM agg ORDER BY day, program_id, campaign_id, referrer_id
    ON CONFLICT (day, program_id, campaign_id, referrer_id) DO UPDATE SET {set_clause}
    RETURNING 1
)
SELECT coalesce(sum(clicks + bot_clicks), 0) FROM agg
"""
_ADD = text(
    _AGGREGATE.format(
        set_clause="clicks = analytics_funnel_daily.clicks + EXCLUDED.clicks, "
        "bot_clicks = analytics_funnel_daily.bot_clicks + EXCLUDED.bot_clicks"
    )
)
_REPLACE = text(_AGGREGATE.format(set_clause="clicks = EXCLUDED.clicks, bot_clicks = EXCLUDED.bot_clicks"))
_ZERO_DAYS = text(
    "UPDATE analytics_funnel_daily SET clicks = 0, bot_clicks = 0"
    " WHERE day >= :first AND day <= :last AND (clicks <> 0 OR bot_clicks <> 0)"
)


async def _lock_watermark(session: AsyncSession, initial: datetime) -> datetime | None:
    """The watermark, locked for this transaction; None while another worker holds it."""
    stmt = text("SELECT value FROM analytics_watermarks WHERE name = :n FOR UPDATE SKIP LOCKED")
    value: datetime | None = await session.scalar(stmt, {"n": WATERMARK})
    if value is not None:
        return value
    exists = await session.scalar(
        text("SELECT 1 FROM analytics_watermarks WHERE name = :n"), {"n": WATERMARK}
    )
    if exists is not None:
        return None  # another worker holds it
    # First run: the first watermark is the oldest stored click, so history already there is counted.
    await session.execute(
        text(
            "INSERT INTO analytics_watermarks (name, value) VALUES "
            "(:n, coalesce((SELECT min(clicked_at) FROM clicks), :initial)) ON CONFLICT (name) DO NOTHING"
        ),
        {"n": WATERMARK, "initial": initial},
    )
    result: datetime | None = await session.scalar(stmt, {"n": WATERMARK})
    return result


@dataclass(frozen=True, slots=True)
class ClickRollup:
    counted: int  # clicks (bots included) added to the daily rows
    watermark: datetime | None  # where the next run starts; None: another worker had the lock
    behind: bool = False  # stopped at max_span with more to read: run again at once


async def rollup_clicks(
    rt: Runtime, *, settle_seconds: float | None = None, max_span_seconds: float | None = None
) -> ClickRollup:
    settings = rt.settings
    settle = settings.analytics_click_settle_seconds if settle_seconds is None else settle_seconds
    span = settings.analytics_click_max_span_seconds if max_span_seconds is None else max_span_seconds
    async with rt.db.sessionmaker() as session, session.begin():
        ready = utcnow() - timedelta(seconds=settle)
        lo = await _lock_watermark(session, ready)
        if lo is None:
            return ClickRollup(0, None)
        hi = min(ready, lo + timedelta(seconds=span))
        if hi <= lo:
            return ClickRollup(0, lo)
        counted = int(await session.scalar(_ADD, {"lo": lo, "hi": hi}) or 0)
        await session.execute(
            text("UPDATE analytics_watermarks SET value = :v, updated_at = now() WHERE name = :n"),
            {"v": hi, "n": WATERMARK},
        )
    return ClickRollup(counted, hi, behind=hi < ready)


async def catch_up_clicks(
    rt: Runtime, *, settle_seconds: float | None = None, max_seconds: float = 10.0
) -> int:
    """`rollup_clicks` until it has read up to the settle delay (a backlog is read max_span at a
    time), or for at most `max_seconds`; returns how many clicks it counted."""
    counted = 0
    deadline = time_module.monotonic() + max_seconds
    while True:
        step = await rollup_clicks(rt, settle_seconds=settle_seconds)
        counted += step.counted
        if not step.behind or time_module.monotonic() > deadline:
            return counted


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


async def recount_clicks(rt: Runtime, *, days: int | None = None) -> int:
    """Replace the click counts of the last `days` whole days below the watermark with a fresh count
    of the stored clicks (late clicks included). Returns how many clicks those days hold."""
    days = rt.settings.analytics_click_recount_days if days is None else days
    async with rt.db.sessionmaker() as session, session.begin():
        watermark = await _lock_watermark(session, utcnow())
        if watermark is None or days <= 0:
            return 0
        last = watermark.astimezone(UTC).date() - timedelta(days=1)  # whole days only
        first = last - timedelta(days=days - 1)
        await session.execute(_ZERO_DAYS, {"first": first, "last": last})
        counted = await session.scalar(
            _REPLACE, {"lo": _day_start(first), "hi": _day_start(last + timedelta(days=1))}
        )
    return int(counted or 0)
