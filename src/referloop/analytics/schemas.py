"""Response models of the funnel analytics API."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from referloop.analytics.service.funnel import BreakdownRow, FunnelReport, Granularity, Period


class FunnelCounts(BaseModel):
    clicks: int = Field(description="Clicks on share links by people (bots excluded).")
    bot_clicks: int = Field(description="Clicks by known bots: counted apart, never attributed.")
    invited: int = Field(description="Leads invited by referrers.")
    signed_up: int
    applied: int
    enrolled: int
    rewarded: int
    rejected: int
    expired: int
    reversed: int
    fraud_hold: int


class Conversion(BaseModel):
    """Ratios of the period's counts (null when the denominator is 0)."""

    click_to_signup: float | None
    signup_to_application: float | None
    application_to_enrolment: float | None
    enrolment_to_reward: float | None
    click_to_enrolment: float | None


class MedianSeconds(BaseModel):
    """Median time in seconds from a step to the next, over referrals that reached the later step
    in the range (null when none did)."""

    invited_to_signed_up: float | None
    signed_up_to_applied: float | None
    applied_to_enrolled: float | None
    enrolled_to_rewarded: float | None


class PeriodOut(BaseModel):
    period_start: date
    counts: FunnelCounts
    conversion: Conversion


class FunnelFiltersOut(BaseModel):
    program_id: uuid.UUID | None
    campaign_id: uuid.UUID | None
    referrer_id: uuid.UUID | None
    university_id: uuid.UUID | None


class FunnelOut(BaseModel):
    from_: date = Field(alias="from", serialization_alias="from")
    to: date
    granularity: Granularity
    filters: FunnelFiltersOut
    totals: FunnelCounts
    conversion: Conversion
    median_seconds: MedianSeconds
    series: list[PeriodOut] = Field(description="One entry per period of the range, oldest first.")

    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "from": "2027-03-01",
                    "to": "2027-03-02",
                    "granularity": "day",
                    "filters": {
                        "program_id": "0193a1c2-7a53-7c2e-9d1a-0b6f4f3a1e12",
                        "campaign_id": None,
                        "referrer_id": None,
                        "university_id": None,
                    },
                    "totals": {
                        "clicks": 120,
                        "bot_clicks": 4,
                        "invited": 10,
                        "signed_up": 12,
                        "applied": 6,
                        "enrolled": 2,
                        "rewarded": 1,
                        "rejected": 1,
                        "expired": 0,
                        "reversed": 0,
                        "fraud_hold": 0,
                    },
                    "conversion": {
                        "click_to_signup": 0.1,
                        "signup_to_application": 0.5,
                        "application_to_enrolment": 0.3333,
                        "enrolment_to_reward": 0.5,
                        "click_to_enrolment": 0.0167,
                    },
                    "median_seconds": {
                        "invited_to_signed_up": 86400.0,
                        "signed_up_to_applied": 259200.0,
                        "applied_to_enrolled": 1209600.0,
                        "enrolled_to_rewarded": 60.0,
                    },
                    "series": [],
                }
            ]
        },
    )


def period_out(period: Period) -> PeriodOut:
    return PeriodOut(
        period_start=period.start,
        counts=FunnelCounts(**period.counts),
        conversion=Conversion(**period.conversion),
    )


def _report_fields(report: FunnelReport) -> dict[str, Any]:
    """What the staff and the member funnel answers share: range, totals, rates, medians, series."""
    assert report.first is not None and report.last is not None
    return {
        "from_": report.first,
        "to": report.last,
        "totals": FunnelCounts(**report.totals),
        "conversion": Conversion(**report.conversion),
        "median_seconds": MedianSeconds(**report.median_seconds),
        "series": [period_out(p) for p in report.series],
    }


def funnel_out(report: FunnelReport, granularity: Granularity, filters: FunnelFiltersOut) -> FunnelOut:
    return FunnelOut(granularity=granularity, filters=filters, **_report_fields(report))


class BreakdownOut(BaseModel):
    key: uuid.UUID | None = Field(
        description="The program, campaign, referrer or university (`by`); null for referrals with none."
    )
    counts: FunnelCounts
    conversion: Conversion


def breakdown_out(row: BreakdownRow) -> BreakdownOut:
    return BreakdownOut(
        key=row.key, counts=FunnelCounts(**row.counts), conversion=Conversion(**row.conversion)
    )


class MemberFunnelFiltersOut(BaseModel):
    program_id: uuid.UUID | None
    campaign_id: uuid.UUID | None


class MemberFunnelOut(BaseModel):
    """A member's own funnel: the clicks on their share links and their referrals' steps."""

    from_: date = Field(alias="from", serialization_alias="from")
    to: date
    granularity: Granularity
    filters: MemberFunnelFiltersOut
    totals: FunnelCounts
    conversion: Conversion
    median_seconds: MedianSeconds
    series: list[PeriodOut] = Field(description="One entry per period of the range, oldest first.")

    model_config = ConfigDict(populate_by_name=True)


def member_funnel_out(
    report: FunnelReport, granularity: Granularity, filters: MemberFunnelFiltersOut
) -> MemberFunnelOut:
    return MemberFunnelOut(granularity=granularity, filters=filters, **_report_fields(report))
