import dataclasses
import uuid

import pytest
from sqlalchemy import select

from referloop.analytics.service.funnel import member_funnel
from referloop.config import Environment
from referloop.demo import (
    DEMO_CAMPAIGN,
    DEMO_LEADS,
    DEMO_MEMBERS,
    DEMO_PASSWORD,
    DEMO_UNIVERSITIES,
    DemoRefused,
    seed_demo,
)
from referloop.identity.models import User
from referloop.referrals.lifecycle.models import ReferralState
from referloop.referrals.lifecycle.service.queries import stats
from referloop.runtime import Runtime
from tests.analytics.helpers import CONSUMERS, deliver


async def test_seed_demo_makes_accounts_that_sign_in_and_runs_twice_safely(runtime: Runtime, client):
    first = await seed_demo(runtime)
    second = await seed_demo(runtime)
    assert not [line for line in second if line.startswith("created")]
    assert len(first) >= len(second)

    email = DEMO_MEMBERS[0][0]
    r = await client.post("/v1/auth/login", json={"login": email, "password": DEMO_PASSWORD})
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    me = await client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json()["display_name"] == DEMO_MEMBERS[0][2]
    assert me.json()["level"] == DEMO_MEMBERS[0][3] > 1  # levels are seeded too (staff-set, audited)

    # The referral side is alive: the catalogue is public, the campaign active, and the first demo
    # member has referrals in every state, with earnings from the rewarded one.
    r = await client.get("/v1/programs", params={"q": DEMO_UNIVERSITIES[0][1], "limit": 50})
    assert r.status_code == 200, r.text
    assert {p["slug"] for p in r.json()["items"]} >= {p[0] for p in DEMO_UNIVERSITIES[0][2]}
    async with runtime.db.sessionmaker() as session:
        referrer = await session.scalar(select(User).where(User.email == email))
        assert referrer is not None
        counts = await stats(session, referrer.id)
    assert all(counts.by_state[state] >= 1 for state in ReferralState), counts.by_state
    assert any(e.pending.amount or e.available.amount for e in counts.earnings)
    r = await client.get("/v1/referrals", params={"limit": 50}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    assert len(r.json()["items"]) >= len(DEMO_LEADS)
    assert any(DEMO_CAMPAIGN in line for line in first) or not any("campaign" in line for line in first)

    # What the worker's analytics consumers make of the lifecycle's own events: the funnel.
    async with runtime.db.sessionmaker() as session:
        from referloop.core.outbox.models import OutboxEvent

        events = (
            await session.scalars(
                select(OutboxEvent)
                .where(
                    OutboxEvent.topic.in_(list(CONSUMERS)),
                    OutboxEvent.payload["referrer_id"].astext == str(referrer.id),
                )
                .order_by(OutboxEvent.id)
            )
        ).all()
    for event in events:
        await deliver(runtime, event.topic, dict(event.payload), event.id)
    async with runtime.db.sessionmaker() as session:
        funnel = await member_funnel(session, uuid.UUID(str(referrer.id)))
    assert funnel.totals["invited"] >= len(DEMO_LEADS)
    assert funnel.totals["enrolled"] >= 3  # enrolled, rewarded, reversed
    assert funnel.totals["rewarded"] >= 1
    assert funnel.totals["fraud_hold"] >= 1
    # Two weeks of clicks, counted by the click job (or its recount): the funnel starts with them.
    from referloop.analytics.service.clicks import catch_up_clicks
    from referloop.referrals.service.clicks import click_counts

    await catch_up_clicks(runtime, settle_seconds=0)
    async with runtime.db.sessionmaker() as session:
        funnel = await member_funnel(session, uuid.UUID(str(referrer.id)))
        stored = await click_counts(session, member_id=referrer.id)
    assert 0 < funnel.totals["clicks"] <= stored.human
    assert funnel.conversion["click_to_signup"] is not None


async def test_seed_demo_refuses_to_run_in_production(runtime: Runtime) -> None:
    # Its staff accounts' password is in the source: in production anyone could sign in as admin.
    production = dataclasses.replace(
        runtime, settings=runtime.settings.model_copy(update={"env": Environment.production})
    )

    async def demo_accounts() -> int:
        async with runtime.db.sessionmaker() as session:
            return len(
                list(await session.scalars(select(User.id).where(User.email.like("%@demo.referloop.dev"))))
            )

    before = await demo_accounts()
    with pytest.raises(DemoRefused, match="production"):
        await seed_demo(production)
    assert await demo_accounts() == before
