"""Staff analytics routes (support, finance, admin): the referral funnel."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query

from referloop.analytics.schemas import BreakdownOut, FunnelFiltersOut, FunnelOut, breakdown_out, funnel_out
from referloop.analytics.service.funnel import (
    CountName,
    Dimension,
    FunnelFilters,
    Granularity,
    bounded_range,
    breakdown,
    funnel,
)
from referloop.core.db import utcnow
from referloop.core.deps import ReadSession
from referloop.core.errors import InvalidInput, problem_responses
from referloop.core.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, decode_cursor, encode_cursor
from referloop.identity.deps import SupportStaff

router = APIRouter(
    prefix="/v1/staff/analytics", tags=["staff: analytics"], responses=problem_responses(401, 403)
)


def _days(date_from: date | None, date_to: date | None, granularity: Granularity) -> tuple[date, date]:
    return bounded_range(date_from, date_to, granularity, utcnow().date())


@router.get("/funnel", response_model=FunnelOut, responses=problem_responses(422))
async def get_funnel(
    session: ReadSession,
    _: SupportStaff,
    program_id: uuid.UUID | None = None,
    campaign_id: uuid.UUID | None = None,
    referrer_id: Annotated[uuid.UUID | None, Query(description="The referring member.")] = None,
    university_id: uuid.UUID | None = None,
    date_from: Annotated[
        date | None, Query(alias="from", description="First UTC day (default: 29 days before `to`).")
    ] = None,
    date_to: Annotated[date | None, Query(alias="to", description="Last UTC day (default: today).")] = None,
    granularity: Granularity = Granularity.day,
) -> FunnelOut:
    """Clicks -> sign-ups -> applications -> enrolments -> rewarded, per UTC day or ISO week (from
    Monday), with conversion rates and median times between steps, for any mix of program, campaign,
    referrer and university. Read from rollups kept current by the worker (clicks lag by about two
    minutes). Counts are activity in each period, not cohorts. At most 366 days or 105 weeks."""
    first, last = _days(date_from, date_to, granularity)
    filters = FunnelFilters(
        program_id=program_id, campaign_id=campaign_id, referrer_id=referrer_id, university_id=university_id
    )
    report = await funnel(session, filters, first, last, granularity)
    return funnel_out(
        report,
        granularity,
        FunnelFiltersOut(
            program_id=program_id,
            campaign_id=campaign_id,
            referrer_id=referrer_id,
            university_id=university_id,
        ),
    )


def _after(cursor: str | None) -> tuple[int, uuid.UUID | None] | None:
    if not cursor:
        return None
    values = decode_cursor(cursor)
    try:
        count, key = int(values[0]), values[1]
        return count, uuid.UUID(key) if key else None
    except (ValueError, IndexError) as exc:
        raise InvalidInput("The cursor is not one this API returned.") from exc


@router.get("/funnel/breakdown", response_model=Page[BreakdownOut], responses=problem_responses(422))
async def get_funnel_breakdown(
    session: ReadSession,
    _: SupportStaff,
    by: Annotated[Dimension, Query(description="One funnel per program, campaign, referrer or university.")],
    program_id: uuid.UUID | None = None,
    campaign_id: uuid.UUID | None = None,
    referrer_id: uuid.UUID | None = None,
    university_id: uuid.UUID | None = None,
    date_from: Annotated[
        date | None, Query(alias="from", description="First UTC day (default: 29 days before `to`).")
    ] = None,
    date_to: Annotated[date | None, Query(alias="to", description="Last UTC day (default: today).")] = None,
    order_by: Annotated[CountName, Query(description="The count to rank by, largest first.")] = "enrolled",
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=300, pattern=r"^[A-Za-z0-9_-]+$")] = None,
) -> Page[BreakdownOut]:
    """The funnel of each program (campaign, referrer or university) over the range, ranked by one
    count (ties by id), with the same filters as the funnel: e.g. the top referrers of a campaign by
    enrolments. At most 366 days."""
    first, last = _days(date_from, date_to, Granularity.day)
    filters = FunnelFilters(
        program_id=program_id, campaign_id=campaign_id, referrer_id=referrer_id, university_id=university_id
    )
    rows = await breakdown(
        session, by, filters, first, last, order_by=order_by, after=_after(cursor), limit=limit + 1
    )
    page = rows[:limit]
    next_cursor = (
        encode_cursor([page[-1].counts[order_by], page[-1].key or ""]) if len(rows) > limit else None
    )
    return Page(items=[breakdown_out(r) for r in page], next_cursor=next_cursor)
