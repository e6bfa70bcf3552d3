"""What the API serves: funnel counts per period, conversion rates and median times between steps,
read from the rollup tables only (`analytics_funnel_daily`, `analytics_milestones`).

Counts are activity in the period (the sign-ups that happened in it, the enrolments that happened in
it), not cohorts: a day's enrolments mostly come from earlier days' sign-ups, so a single day's rate
can pass 1; over a long range the rates approach the cohort ones. Periods are UTC days, or ISO weeks
(starting Monday; the first and last weeks are cut by the range)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from enum import StrEnum
from typing import Any, Literal, get_args

from sqlalchemy import ColumnElement, and_, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from referloop.analytics.errors import BadRange
from referloop.analytics.models import FunnelDaily, Milestone, Step

CountName = Literal[
    "clicks",
    "bot_clicks",
    "invited",
    "signed_up",
    "applied",
    "enrolled",
    "rewarded",
    "rejected",
    "expired",
    "reversed",
    "fraud_hold",
]
COUNTS: tuple[str, ...] = get_args(CountName)
# (name, numerator, denominator)
CONVERSIONS = (
    ("click_to_signup", "signed_up", "clicks"),
    ("signup_to_application", "applied", "signed_up"),
    ("application_to_enrolment", "enrolled", "applied"),
    ("enrolment_to_reward", "rewarded", "enrolled"),
    ("click_to_enrolment", "enrolled", "clicks"),
)
# The step before each step whose median wait is reported.
PREVIOUS: dict[Step, Step] = {
    Step.signed_up: Step.invited,
    Step.applied: Step.signed_up,
    Step.enrolled: Step.applied,
    Step.rewarded: Step.enrolled,
}


class Dimension(StrEnum):
    program = "program"
    campaign = "campaign"
    referrer = "referrer"
    university = "university"


class Granularity(StrEnum):
    day = "day"
    week = "week"


@dataclass(frozen=True)
class FunnelFilters:
    program_id: uuid.UUID | None = None
    campaign_id: uuid.UUID | None = None
    referrer_id: uuid.UUID | None = None
    university_id: uuid.UUID | None = None

    def where(self, table: Any) -> list[ColumnElement[bool]]:
        clauses: list[ColumnElement[bool]] = []
        for name in ("program_id", "campaign_id", "referrer_id", "university_id"):
            value = getattr(self, name)
            if value is not None:
                clauses.append(getattr(table, name) == value)
        return clauses


def conversion_rates(counts: dict[str, int]) -> dict[str, float | None]:
    return {
        name: round(counts[num] / counts[den], 4) if counts[den] else None for name, num, den in CONVERSIONS
    }


@dataclass
class Period:
    start: date
    counts: dict[str, int]

    @property
    def conversion(self) -> dict[str, float | None]:
        return conversion_rates(self.counts)


@dataclass
class FunnelReport:
    first: date | None
    last: date | None
    totals: dict[str, int]
    median_seconds: dict[str, float | None]
    series: list[Period] = field(default_factory=list)

    @property
    def conversion(self) -> dict[str, float | None]:
        return conversion_rates(self.totals)


DEFAULT_DAYS = 30
# Bounded ranges instead of a cursor: a series of at most this many periods.
MAX_PERIODS = {Granularity.day: 366, Granularity.week: 105}


def bounded_range(
    date_from: date | None, date_to: date | None, granularity: Granularity, today: date
) -> tuple[date, date]:
    """The range a funnel request asks for: `to` defaults to today, `from` to 29 days before `to`;
    refused (BadRange, 422) when reversed or longer than MAX_PERIODS periods."""
    last = date_to or today
    # The default window stops at the calendar's first day (a `to` in year 1 would overflow).
    first = date_from or date.fromordinal(max(1, last.toordinal() - (DEFAULT_DAYS - 1)))
    if first > last:
        raise BadRange("`from` must not be after `to`.")
    periods = (last - first).days // (7 if granularity is Granularity.week else 1) + 1
    if periods > MAX_PERIODS[granularity]:
        raise BadRange(
            f"At most {MAX_PERIODS[granularity]} {granularity.value}s per request; ask for a shorter range."
        )
    return first, last


def _range(first: date | None, last: date | None, column: Any) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    if first is not None:
        clauses.append(column >= first)
    if last is not None:
        clauses.append(column <= last)
    return clauses


def _sums() -> list[Any]:
    return [func.coalesce(func.sum(FunnelDaily.__table__.c[c]), 0).label(c) for c in COUNTS]


async def totals(
    session: AsyncSession, filters: FunnelFilters, first: date | None, last: date | None
) -> dict[str, int]:
    row = (
        await session.execute(
            select(*_sums()).where(*filters.where(FunnelDaily), *_range(first, last, FunnelDaily.day))
        )
    ).one()
    return {c: int(row._mapping[c]) for c in COUNTS}


def period_start(day: date, granularity: Granularity) -> date:
    return day - timedelta(days=day.weekday()) if granularity is Granularity.week else day


async def series(
    session: AsyncSession, filters: FunnelFilters, first: date, last: date, granularity: Granularity
) -> list[Period]:
    """One entry per period of the range, zeros included, oldest first."""
    bucket = (
        func.date_trunc("week", FunnelDaily.day).cast(FunnelDaily.day.type)
        if granularity is Granularity.week
        else FunnelDaily.day
    ).label("bucket")
    rows = (
        await session.execute(
            select(bucket, *_sums())
            .where(*filters.where(FunnelDaily), *_range(first, last, FunnelDaily.day))
            .group_by(bucket)
        )
    ).all()
    found = {r.bucket: {c: int(r._mapping[c]) for c in COUNTS} for r in rows}
    step = 7 if granularity is Granularity.week else 1
    start = period_start(first, granularity)
    # Counted, not stepped past `last`: the step after 9999-12-31 does not exist.
    periods = (last - start).days // step + 1
    return [
        Period(day, found.get(day, dict.fromkeys(COUNTS, 0)))
        for day in (start + timedelta(days=i * step) for i in range(periods))
    ]


async def median_seconds(
    session: AsyncSession, filters: FunnelFilters, first: date | None, last: date | None
) -> dict[str, float | None]:
    """Median time from each step to the next, over referrals that reached the later step in the
    range (both steps reported, not implied), e.g. `signed_up_to_applied`."""
    b = aliased(Milestone)
    a = aliased(Milestone)
    previous = case({s.value: p.value for s, p in PREVIOUS.items()}, value=b.step)
    wait = func.greatest(func.extract("epoch", b.at - a.at), 0)
    rows = (
        await session.execute(
            select(b.step, func.percentile_cont(0.5).within_group(wait))
            .join(a, and_(a.referral_id == b.referral_id, a.step == previous))
            .where(
                b.step.in_([s.value for s in PREVIOUS]),
                a.implied.is_(False),
                b.implied.is_(False),
                *filters.where(b),
                *_range(first, last, b.day),
            )
            .group_by(b.step)
        )
    ).all()
    found = {step: float(value) for step, value in rows if value is not None}
    return {f"{p.value}_to_{s.value}": found.get(s.value) for s, p in PREVIOUS.items()}


async def funnel(
    session: AsyncSession,
    filters: FunnelFilters,
    first: date,
    last: date,
    granularity: Granularity = Granularity.day,
) -> FunnelReport:
    """The staff funnel: totals, rates and medians over [first, last], and the series by period."""
    periods = await series(session, filters, first, last, granularity)
    summed = {c: sum(p.counts[c] for p in periods) for c in COUNTS}
    return FunnelReport(first, last, summed, await median_seconds(session, filters, first, last), periods)


async def member_funnel(
    session: AsyncSession,
    member_id: uuid.UUID,
    *,
    first: date | None = None,
    last: date | None = None,
    program_id: uuid.UUID | None = None,
    campaign_id: uuid.UUID | None = None,
    granularity: Granularity | None = None,
) -> FunnelReport:
    """A referrer's own funnel (for `GET /v1/referrals/stats`): all time unless a range is given;
    with `granularity` and both ends of the range, also the series by period. Always filtered to
    `member_id`: a member never sees another referrer's counts."""
    filters = FunnelFilters(referrer_id=member_id, program_id=program_id, campaign_id=campaign_id)
    if granularity is not None and first is not None and last is not None:
        return await funnel(session, filters, first, last, granularity)
    return FunnelReport(
        first,
        last,
        await totals(session, filters, first, last),
        await median_seconds(session, filters, first, last),
    )


@dataclass
class BreakdownRow:
    key: uuid.UUID | None  # the program, campaign, referrer or university (null: none)
    counts: dict[str, int]

    @property
    def conversion(self) -> dict[str, float | None]:
        return conversion_rates(self.counts)


async def breakdown(
    session: AsyncSession,
    by: Dimension,
    filters: FunnelFilters,
    first: date,
    last: date,
    *,
    order_by: str,
    after: tuple[int, uuid.UUID | None] | None,
    limit: int,
) -> list[BreakdownRow]:
    """The funnel of each program (campaign, referrer, university) over [first, last], largest
    `order_by` count first, then by id; `after` is the (count, id) of the previous page's last row.
    Rows with no id (referrals for no program, or no campaign) come last on each count."""
    key = getattr(FunnelDaily, f"{by.value}_id").label("key")
    sums = _sums()
    grouped = (
        select(key, *sums)
        .where(*filters.where(FunnelDaily), *_range(first, last, FunnelDaily.day))
        .group_by(key)
        .subquery()
    )
    measure = grouped.c[order_by]
    # A null id sorts as the smallest id: the nil UUID.
    nil = uuid.UUID(int=0)
    ident = func.coalesce(grouped.c.key, nil)
    stmt = select(grouped)
    if after is not None:
        count, last_key = after
        stmt = stmt.where(
            or_(measure < count, and_(measure == count, ident < (last_key or nil))),
        )
    stmt = stmt.order_by(measure.desc(), ident.desc()).limit(limit)
    rows = (await session.execute(stmt)).all()
    return [BreakdownRow(r.key, {c: int(r._mapping[c]) for c in COUNTS}) for r in rows]
