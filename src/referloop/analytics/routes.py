"""Staff analytics routes (support, finance, admin): the referral funnel."""

from __future__ import annotations

import uuid
from datetime import date, timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from referloop.analytics.errors import BadRange
from referloop.analytics.schemas import FunnelFiltersOut, FunnelOut, funnel_out
from referloop.analytics.service.funnel import FunnelFilters, Granularity, funnel
from referloop.core.db import utcnow
from referloop.core.deps import ReadSession
from referloop.core.errors import problem_responses
from referloop.identity.deps import SupportStaff

router = APIRouter(
    prefix="/v1/staff/analytics", tags=["staff: analytics"], responses=problem_responses(401, 403)
)

DEFAULT_DAYS = 30
# Bounded ranges instead of a cursor: a series of at most this many periods.
MAX_PERIODS = {Granularity.day: 366, Granularity.week: 105}


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
    last = date_to or utcnow().date()
    first = date_from or last - timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise BadRange("`from` must not be after `to`.")
    periods = (last - first).days // (7 if granularity is Granularity.week else 1) + 1
    if periods > MAX_PERIODS[granularity]:
        raise BadRange(
            f"At most {MAX_PERIODS[granularity]} {granularity.value}s per request; ask for a shorter range."
        )
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
