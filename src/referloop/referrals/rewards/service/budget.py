"""Spent counters with their guard in SQL: a limit holds whatever runs at once.

Each counter moves in one statement that inserts or adds, but only while the result stays within
the limit (`... DO UPDATE ... WHERE value + :x <= :limit RETURNING`): no row back means the limit
would be passed and nothing changed. The row lock the statement takes orders concurrent grants;
callers take counters first, then the ledger, then the campaign budget, so locks never cross."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.referrals.models import BudgetPeriod

# Periods are calendar periods in UTC; `campaign` is the campaign's whole life. Its counters are
# keyed by campaign already (`reward_counters.campaign_id`), so they all start at one fixed instant:
# never at `starts_at`, which staff can edit (a new start would begin new counters at 0, resetting
# every per-campaign cap, while voids kept decrementing the old rows). Migration
# 0019_campaign_period_counters moved the rows kept under `starts_at` here.
CAMPAIGN_PERIOD_START = datetime(1970, 1, 1, tzinfo=UTC)


def period_start(period: BudgetPeriod | str, at: datetime) -> datetime:
    """The start of the `period` that `at` falls in: the one key that grants, bulk grants and the
    charges recorded on a reward (which voids give back) all use."""
    at = at.astimezone(UTC)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    match BudgetPeriod(period):
        case BudgetPeriod.day:
            return day
        case BudgetPeriod.week:
            return day - timedelta(days=day.weekday())  # ISO weeks start on Monday
        case BudgetPeriod.month:
            return day.replace(day=1)
        case BudgetPeriod.year:
            return day.replace(month=1, day=1)
        case BudgetPeriod.campaign:
            return CAMPAIGN_PERIOD_START


_BUMP = text("""
INSERT INTO reward_counters AS c (campaign_id, member_id, counter, period_start, value)
VALUES (:campaign_id, :member_id, :counter, :period_start, :delta)
ON CONFLICT (campaign_id, member_id, counter, period_start)
DO UPDATE SET value = c.value + EXCLUDED.value
WHERE CAST(:limit AS bigint) IS NULL OR c.value + EXCLUDED.value <= CAST(:limit AS bigint)
RETURNING value
""")

_UNBUMP = text("""
UPDATE reward_counters SET value = greatest(value - :delta, 0)
WHERE campaign_id = :campaign_id AND member_id = :member_id AND counter = :counter
  AND period_start = :period_start
""")


async def bump_counter(
    session: AsyncSession,
    *,
    campaign_id: uuid.UUID,
    member_id: uuid.UUID,
    counter: str,
    period_start: datetime,
    delta: int,
    limit: int | None,
) -> int | None:
    """Add `delta`; the new value, or None if it would pass `limit` (then nothing changed)."""
    if limit is not None and delta > limit:
        return None
    value = await session.scalar(
        _BUMP,
        {
            "campaign_id": campaign_id,
            "member_id": member_id,
            "counter": counter,
            "period_start": period_start,
            "delta": delta,
            "limit": limit,
        },
    )
    return int(value) if value is not None else None


async def unbump_counter(
    session: AsyncSession,
    *,
    campaign_id: uuid.UUID,
    member_id: uuid.UUID,
    counter: str,
    period_start: datetime,
    delta: int,
) -> None:
    await session.execute(
        _UNBUMP,
        {
            "campaign_id": campaign_id,
            "member_id": member_id,
            "counter": counter,
            "period_start": period_start,
            "delta": delta,
        },
    )


# The budget guard: the campaign's total is passed in (read in this transaction); NULL means no cap.
_SPEND = text("""
INSERT INTO campaign_budgets AS b (campaign_id, spent, rewards, updated_at)
SELECT :campaign_id, :amount, 1, now()
WHERE CAST(:total AS bigint) IS NULL OR :amount <= CAST(:total AS bigint)
ON CONFLICT (campaign_id)
DO UPDATE SET spent = b.spent + EXCLUDED.spent, rewards = b.rewards + 1, updated_at = now()
WHERE CAST(:total AS bigint) IS NULL OR b.spent + EXCLUDED.spent <= CAST(:total AS bigint)
RETURNING spent
""")

_REFUND = text("""
UPDATE campaign_budgets SET spent = spent - :amount, rewards = rewards - 1, updated_at = now()
WHERE campaign_id = :campaign_id
""")

_SPENT = text("SELECT spent FROM campaign_budgets WHERE campaign_id = :campaign_id")

# What the budget row would hold had it been kept all along: the granted rewards not given back
# (voided ones were refunded; clawed-back ones stay spent).
_GRANTED = (
    "SELECT coalesce(sum(amount), 0) AS spent, count(*) AS rewards FROM rewards"
    " WHERE campaign_id = :campaign_id AND status IN ('pending', 'released', 'clawed_back')"
)
_GRANTED_SUM = text(_GRANTED)
# A row seeded or rebuilt from the granted rewards counts those granted while the campaign had no
# total too: they lose their UNCHARGED_MARK in the same statement, so that voiding one later refunds
# the row (else `spent` would keep an amount that was given back).
_ADOPT_UNCHARGED = (
    "UPDATE rewards SET charged_counters = (SELECT coalesce(jsonb_agg(e), CAST('[]' AS jsonb))"
    "  FROM jsonb_array_elements(rewards.charged_counters) AS e WHERE e->>'counter' <> 'budget:none')"
    " WHERE campaign_id = :campaign_id AND status IN ('pending', 'released', 'clawed_back')"
    '  AND charged_counters @> CAST(\'[{"counter": "budget:none"}]\' AS jsonb)'
    "  AND EXISTS (SELECT 1 FROM budget_row)"
)
_SEED = text(
    "WITH budget_row AS (INSERT INTO campaign_budgets (campaign_id, spent, rewards, updated_at)"  # noqa: S608 - fixed text
    f" SELECT :campaign_id, g.spent, g.rewards, now() FROM ({_GRANTED}) g"
    f" ON CONFLICT (campaign_id) DO NOTHING RETURNING campaign_id) {_ADOPT_UNCHARGED}"
)
_RESYNC = text(
    "WITH budget_row AS (INSERT INTO campaign_budgets (campaign_id, spent, rewards, updated_at)"  # noqa: S608 - fixed text
    f" SELECT :campaign_id, g.spent, g.rewards, now() FROM ({_GRANTED}) g"
    " ON CONFLICT (campaign_id) DO UPDATE"
    " SET spent = EXCLUDED.spent, rewards = EXCLUDED.rewards, updated_at = now()"
    f" RETURNING campaign_id) {_ADOPT_UNCHARGED}"
)

# A campaign with no total budget keeps no budget row up to date: every grant updating that one row
# serialised all grants of the campaign. Its rewards carry this mark in `charged_counters`, so a
# void knows there is nothing to refund. A row is created (seeded from the granted rewards) when a
# campaign with a total first needs it, so a total set later counts what was paid before.
UNCHARGED_MARK: dict[str, Any] = {"counter": "budget:none", "period_start": None, "delta": 0}


def charged_to_budget(charged_counters: list[dict[str, Any]]) -> bool:
    return not any(c.get("counter") == UNCHARGED_MARK["counter"] for c in charged_counters)


def counter_charges(charged_counters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-referrer counters a reward was charged to (without the budget mark)."""
    return [c for c in charged_counters if not str(c.get("counter", "")).startswith("budget:")]


# A campaign's total is read by grants under a shared lock, held to their commit, and changed under
# the exclusive one: a change waits for the grants in flight (so a resync counts them, and none of
# them charges against a total that changed after it read it), and grants that start meanwhile wait
# for the change and read the new total. An advisory lock, not FOR SHARE on the campaign row:
# concurrent grants would each write a MultiXact into that one row.
_TOTAL_LOCK_KEY = "hashtextextended('campaign-total:' || CAST(c AS text), 0)"
_HOLD_TOTALS = text(
    f"SELECT count(pg_advisory_xact_lock_shared({_TOTAL_LOCK_KEY}))"  # noqa: S608 - fixed text
    " FROM unnest(CAST(:ids AS uuid[])) AS c"
)
_LOCK_TOTAL = text(f"SELECT pg_advisory_xact_lock({_TOTAL_LOCK_KEY}) FROM (SELECT CAST(:id AS uuid) AS c) x")  # noqa: S608
_TOTALS = text("SELECT id, budget_total_amount FROM campaigns WHERE id = ANY(CAST(:ids AS uuid[]))")


async def hold_totals(session: AsyncSession, campaign_ids: set[uuid.UUID]) -> dict[uuid.UUID, int | None]:
    """The campaigns' current totals, read under their shared total locks (held to commit)."""
    ids = sorted(campaign_ids)
    await session.execute(_HOLD_TOTALS, {"ids": ids})
    # A statement of its own: its snapshot is taken after the locks, so a total changed by the
    # transaction we waited for is seen.
    rows = await session.execute(_TOTALS, {"ids": ids})
    return {r.id: r.budget_total_amount for r in rows}


async def lock_total(session: AsyncSession, campaign_id: uuid.UUID) -> None:
    """Before a campaign's total changes: waits for the grants that read the old one to commit."""
    await session.execute(_LOCK_TOTAL, {"id": campaign_id})


async def spend_budget(session: AsyncSession, campaign_id: uuid.UUID, amount: int, total: int | None) -> bool:
    """Charge `amount` to the campaign's budget unless that would pass `total`."""
    spent = await session.scalar(_SPEND, {"campaign_id": campaign_id, "amount": amount, "total": total})
    return spent is not None


async def refund_budget(session: AsyncSession, campaign_id: uuid.UUID, amount: int) -> None:
    await session.execute(_REFUND, {"campaign_id": campaign_id, "amount": amount})


async def budget_spent(session: AsyncSession, campaign_id: uuid.UUID) -> int:
    return int(await session.scalar(_SPENT, {"campaign_id": campaign_id}) or 0)


async def budget_spent_seeded(session: AsyncSession, campaign_id: uuid.UUID) -> int:
    """What a campaign with a total has spent; creates its row (seeded) the first time."""
    spent = await session.scalar(_SPENT, {"campaign_id": campaign_id})
    if spent is None:
        await session.execute(_SEED, {"campaign_id": campaign_id})
        spent = await session.scalar(_SPENT, {"campaign_id": campaign_id})
    return int(spent or 0)


async def resync_budget(session: AsyncSession, campaign_id: uuid.UUID) -> None:
    """Rebuild the budget row from the granted rewards. For a total set on a campaign that had
    none: its grants meanwhile charged no row, so a row kept from an earlier total is stale (it
    would let the campaign spend past its new total)."""
    await session.execute(_RESYNC, {"campaign_id": campaign_id})


async def granted_totals(session: AsyncSession, campaign_id: uuid.UUID) -> tuple[int, int]:
    """Spent and reward count from the rewards themselves (campaigns without a total)."""
    row = (await session.execute(_GRANTED_SUM, {"campaign_id": campaign_id})).one()
    return int(row.spent), int(row.rewards)
