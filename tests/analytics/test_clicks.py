"""Clicks -> daily funnel rows, by the periodic job's high-water mark: every click once."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from referloop.analytics.service.clicks import catch_up_clicks, recount_clicks
from referloop.analytics.tasks import click_rollup_job
from referloop.core.ids import uuid7
from referloop.referrals.service.clicks import flush_all_clicks, store_clicks
from referloop.runtime import Runtime
from tests.analytics.helpers import staff_funnel
from tests.factories import register_member
from tests.referrals.helpers import (
    BOT_UA,
    BROWSER_UA,
    Admin,
    create_campaign,
    create_program,
    create_university,
)


@pytest.fixture
async def link(client: httpx.AsyncClient, admin: Admin) -> dict[str, Any]:
    uni = await create_university(client, admin)
    program = await create_program(client, admin, uni["id"])
    campaign = await create_campaign(client, admin, [program["id"]])
    member = await register_member(client)
    r = await client.get("/v1/referrals/links", params={"limit": 200}, headers=member.auth)
    item = next(i for i in r.json()["items"] if i["program_id"] == program["id"])
    return {
        "university": uni,
        "program": program,
        "campaign": campaign,
        "member": member,
        "slug": item["slug"],
    }


async def follow(client: httpx.AsyncClient, slug: str, times: int, ua: str = BROWSER_UA) -> None:
    for _ in range(times):
        r = await client.get(f"/r/{slug}", headers={"User-Agent": ua})
        assert r.status_code == 302


async def test_every_click_is_counted_once_per_program_campaign_referrer_and_university(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin, link: dict[str, Any]
):
    await follow(client, link["slug"], 7)
    await follow(client, link["slug"], 2, ua=BOT_UA)
    await flush_all_clicks(runtime)
    first = await catch_up_clicks(runtime, settle_seconds=0)
    assert first >= 9
    again = await catch_up_clicks(runtime, settle_seconds=0)  # nothing new: nothing added
    assert again == 0

    token = admin.access_token
    for name, value in (
        ("program_id", link["program"]["id"]),
        ("campaign_id", link["campaign"]["id"]),
        ("referrer_id", link["member"].id),
        ("university_id", link["university"]["id"]),
    ):
        body = await staff_funnel(client, token, **{name: value})
        assert (body["totals"]["clicks"], body["totals"]["bot_clicks"]) == (7, 2), name
        today = body["series"][-1]
        assert today["period_start"] == str(datetime.now(UTC).date())
        assert today["counts"]["clicks"] == 7


async def test_clicks_before_the_settle_delay_wait_for_the_next_run(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin, link: dict[str, Any]
):
    await catch_up_clicks(runtime, settle_seconds=0)
    await follow(client, link["slug"], 3)
    await flush_all_clicks(runtime)
    await catch_up_clicks(runtime, settle_seconds=3600)  # the default job waits for stragglers
    body = await staff_funnel(client, admin.access_token, program_id=link["program"]["id"])
    assert body["totals"]["clicks"] == 0
    await catch_up_clicks(runtime, settle_seconds=0)
    body = await staff_funnel(client, admin.access_token, program_id=link["program"]["id"])
    assert body["totals"]["clicks"] == 3


async def test_concurrent_jobs_count_each_click_once(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin, link: dict[str, Any]
):
    await follow(client, link["slug"], 5)
    await flush_all_clicks(runtime)
    await asyncio.gather(*(catch_up_clicks(runtime, settle_seconds=0) for _ in range(4)))
    await click_rollup_job(runtime)  # the periodic job itself (default settle: counts nothing new)
    body = await staff_funnel(client, admin.access_token, program_id=link["program"]["id"])
    assert body["totals"]["clicks"] == 5


async def test_a_click_stored_late_is_counted_by_the_recount(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin, link: dict[str, Any]
):
    await follow(client, link["slug"], 2)
    await flush_all_clicks(runtime)
    await catch_up_clicks(runtime, settle_seconds=0)
    # A click from yesterday reaching the table only now (the worker was down): below the watermark.
    yesterday = datetime.now(UTC) - timedelta(days=1)
    late = {
        "id": uuid7(),
        "clicked_at": yesterday,
        "program_id": uuid.UUID(link["program"]["id"]),
        "member_id": uuid.UUID(link["member"].id),
        "code": "LATE",
        "ip_hash": None,
        "user_agent": BROWSER_UA,
        "referer": None,
        "country": None,
        "is_bot": False,
    }
    assert await store_clicks(runtime, [late]) == 1
    await catch_up_clicks(runtime, settle_seconds=0)
    params = {"program_id": link["program"]["id"], "from": str(yesterday.date())}
    body = await staff_funnel(client, admin.access_token, **params)
    assert body["totals"]["clicks"] == 2  # the incremental job does not see it...

    await recount_clicks(runtime, days=2)
    body = await staff_funnel(client, admin.access_token, **params)
    assert body["totals"]["clicks"] == 3  # ...the recount does, on the day it happened
    assert body["series"][0]["counts"]["clicks"] == 1
    await recount_clicks(runtime, days=2)  # and it sets, never adds
    body = await staff_funnel(client, admin.access_token, **params)
    assert body["totals"]["clicks"] == 3
