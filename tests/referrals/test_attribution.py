"""Attributing sign-ups to referrers: code or click, window, last click wins, self-referral refused."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from referloop.core.ids import uuid7
from referloop.identity.models import User
from referloop.referrals.service.attribution import (
    Outcome,
    SelfReferral,
    attribute_signup,
    self_referral_reason,
)
from referloop.referrals.service.clicks import ensure_partitions, flush_all_clicks
from referloop.referrals.service.members import MemberFacts, canonical_email
from referloop.referrals.tasks import handle_user_registered
from referloop.runtime import Runtime
from tests.factories import Member, register_member
from tests.referrals.helpers import (
    BOT_UA,
    BROWSER_UA,
    Admin,
    create_campaign,
    create_program,
    create_university,
    sql,
    uniq,
)


async def registered_payload(rt: Runtime, user_id: str) -> dict[str, Any]:
    rows = await sql(
        rt,
        "SELECT payload FROM outbox_events WHERE topic = 'identity.user_registered'"
        " AND payload->>'user_id' = :u",
        u=user_id,
    )
    assert len(rows) == 1
    payload: dict[str, Any] = rows[0]["payload"]
    return payload


async def handle(rt: Runtime, payload: dict[str, Any]) -> None:
    async with rt.db.sessionmaker() as session, session.begin():
        await handle_user_registered(session, rt, uuid7(), payload)


async def attribute(rt: Runtime, user_id: str, **kwargs: Any):
    async with rt.db.sessionmaker() as session, session.begin():
        user = await session.get(User, uuid.UUID(user_id))
        assert user is not None
        return await attribute_signup(
            session,
            rt,
            user,
            kwargs.pop("code", None),
            kwargs.pop("click_id", None),
            kwargs.pop("device_id", None),
            **kwargs,
        )


async def attributions_of(rt: Runtime, referee_id: str) -> list[dict[str, Any]]:
    return await sql(rt, "SELECT * FROM attributions WHERE referee_id = :r", r=referee_id)


async def attributed_events(rt: Runtime, referee_id: str) -> list[dict[str, Any]]:
    rows = await sql(
        rt,
        "SELECT payload FROM outbox_events WHERE topic = 'referrals.signup_attributed'"
        " AND payload->>'referee_id' = :r",
        r=referee_id,
    )
    return [r["payload"] for r in rows]


async def code_of(client: httpx.AsyncClient, member: Member) -> str:
    code: str = (await client.get("/v1/me", headers=member.auth)).json()["referral_code"]
    return code


async def nothing_written(rt: Runtime, referee_id: str) -> None:
    assert await attributions_of(rt, referee_id) == []
    assert await attributed_events(rt, referee_id) == []
    assert await sql(rt, "SELECT 1 FROM member_devices WHERE member_id = :m", m=referee_id) == []
    # Nor anything downstream of an attribution: no referral, no money.
    assert await sql(rt, "SELECT 1 FROM referrals WHERE referee_id = :r", r=referee_id) == []
    assert await sql(rt, "SELECT 1 FROM ledger_postings WHERE member_id = :m", m=referee_id) == []


@pytest.fixture
async def program(client: httpx.AsyncClient, admin: Admin) -> dict[str, Any]:
    uni = await create_university(client, admin)
    return await create_program(client, admin, uni["id"])


async def click(
    client: httpx.AsyncClient, referrer: Member, program: dict[str, Any], ua: str = BROWSER_UA
) -> str | None:
    r = await client.get("/v1/referrals/links", params={"limit": 200}, headers=referrer.auth)
    slug = next(i["slug"] for i in r.json()["items"] if i["program_id"] == program["id"])
    r = await client.get(f"/r/{slug}", headers={"User-Agent": ua})
    assert r.status_code == 302
    return parse_qs(urlsplit(r.headers["location"]).query).get("rl_click", [None])[0]


async def test_sign_up_with_a_code_is_attributed_once_through_the_event(
    client: httpx.AsyncClient, runtime: Runtime
):
    referrer = await register_member(client)
    referee = await register_member(client, referral_code=(await code_of(client, referrer)).lower())
    payload = await registered_payload(runtime, referee.id)
    await handle(runtime, payload)
    await handle(runtime, payload)  # a redelivery changes nothing

    (row,) = await attributions_of(runtime, referee.id)
    assert str(row["member_id"]) == referrer.id and row["via"] == "code" and row["program_id"] is None
    (event,) = await attributed_events(runtime, referee.id)
    assert event["referrer_id"] == referrer.id and event["via"] == "code"


async def test_vanity_code_at_sign_up_is_attributed(client: httpx.AsyncClient, runtime: Runtime):
    referrer = await register_member(client)
    vanity = f"Lola{uniq()[:8]}"  # identity stores it Crockford-normalized ("LO1A..."); it still matches
    assert (
        await client.put("/v1/referrals/vanity-code", json={"code": vanity}, headers=referrer.auth)
    ).status_code == 200
    referee = await register_member(client, referral_code=vanity)
    await handle(runtime, await registered_payload(runtime, referee.id))
    (row,) = await attributions_of(runtime, referee.id)
    assert str(row["member_id"]) == referrer.id and row["code"] == vanity


async def test_click_within_window_is_attributed_and_last_click_wins(
    client: httpx.AsyncClient, admin: Admin, program: dict[str, Any], runtime: Runtime
):
    campaign = await create_campaign(client, admin, [program["id"]], attribution_window_days=7)
    first, second = await register_member(client), await register_member(client)
    await click(client, first, program)
    last_click = await click(client, second, program)  # the cookie now holds this one
    referee = await register_member(client)

    # Not flushed yet: the pending click is found in Redis. The typed code of `first` loses to the click.
    result = await attribute(
        runtime, referee.id, code=await code_of(client, first), click_id=uuid.UUID(last_click)
    )
    assert result.outcome is Outcome.attributed
    (row,) = await attributions_of(runtime, referee.id)
    assert str(row["member_id"]) == second.id and row["via"] == "click"
    assert str(row["program_id"]) == program["id"] and str(row["campaign_id"]) == campaign["id"]
    assert str(row["click_id"]) == last_click

    # After the flush, from the table.
    await flush_all_clicks(runtime)
    another = await register_member(client)
    result = await attribute(runtime, another.id, click_id=uuid.UUID(last_click))
    assert result.outcome is Outcome.attributed and str(result.referrer_id) == second.id


async def test_click_outside_the_window_or_by_a_bot_is_not_attributed(
    client: httpx.AsyncClient, admin: Admin, program: dict[str, Any], runtime: Runtime
):
    await create_campaign(client, admin, [program["id"]], attribution_window_days=7)
    referrer = await register_member(client)
    click_id = await click(client, referrer, program)
    await flush_all_clicks(runtime)
    late = await register_member(client)
    result = await attribute(
        runtime, late.id, click_id=uuid.UUID(click_id), at=datetime.now(UTC) + timedelta(days=8)
    )
    assert result.outcome is Outcome.no_referrer and "window" in (result.reason or "")
    await nothing_written(runtime, late.id)

    # Within the window, and with no campaign the default 30 days applies.
    in_time = await register_member(client)
    result = await attribute(
        runtime, in_time.id, click_id=uuid.UUID(click_id), at=datetime.now(UTC) + timedelta(days=6)
    )
    assert result.outcome is Outcome.attributed

    # A bot's click carries no click id; even its stored id is never credited.
    assert await click(client, referrer, program, ua=BOT_UA) is None
    await flush_all_clicks(runtime)
    bot_click = (
        await sql(runtime, "SELECT id FROM clicks WHERE program_id = :p AND is_bot", p=program["id"])
    )[0]["id"]
    visitor = await register_member(client)
    result = await attribute(runtime, visitor.id, click_id=bot_click)
    assert result.outcome is Outcome.no_referrer and "bot" in (result.reason or "")
    await nothing_written(runtime, visitor.id)


async def test_a_sign_up_is_judged_at_its_own_time_when_the_worker_gets_to_it_late(
    client: httpx.AsyncClient, admin: Admin, program: dict[str, Any], runtime: Runtime
):
    await create_campaign(client, admin, [program["id"]], attribution_window_days=7)
    referrer = await register_member(client)
    click_id = await click(client, referrer, program)
    await flush_all_clicks(runtime)
    referee = await register_member(client)
    # The click and the sign-up a minute apart, 8 days ago; the event is handled only now.
    await ensure_partitions(runtime, [datetime.now(UTC) - timedelta(days=9)])
    await sql(
        runtime, "UPDATE clicks SET clicked_at = now() - interval '8 days 1 minute' WHERE id = :c", c=click_id
    )
    await sql(runtime, "UPDATE users SET created_at = now() - interval '8 days' WHERE id = :u", u=referee.id)
    result = await attribute(runtime, referee.id, click_id=uuid.UUID(click_id))
    assert result.outcome is Outcome.attributed and str(result.referrer_id) == referrer.id
    (row,) = await attributions_of(runtime, referee.id)
    assert row["attributed_at"] < datetime.now(UTC) - timedelta(days=7)


async def test_self_referral_with_own_code_is_refused(client: httpx.AsyncClient, runtime: Runtime):
    member = await register_member(client)
    result = await attribute(runtime, member.id, code=await code_of(client, member))
    assert result.outcome is Outcome.self_referral and result.reason == SelfReferral.same_member
    await nothing_written(runtime, member.id)


async def test_self_referral_by_the_same_gmail_mailbox_is_refused(
    client: httpx.AsyncClient, runtime: Runtime
):
    local = f"asha{uniq()}"
    referrer = await register_member(client, email=f"{local[:3]}.{local[3:]}@gmail.com")
    referee = await register_member(
        client, email=f"{local}+second@googlemail.com", referral_code=await code_of(client, referrer)
    )
    await handle(runtime, await registered_payload(runtime, referee.id))
    await nothing_written(runtime, referee.id)


async def test_self_referral_from_a_device_seen_on_the_referrer_is_refused(
    client: httpx.AsyncClient, program: dict[str, Any], runtime: Runtime
):
    device = f"install-{uniq()}"
    referrer = await register_member(client)
    r = await client.get("/v1/referrals/links", headers={**referrer.auth, "X-Device-ID": device})
    assert r.status_code == 200
    referee = await register_member(client, referral_code=await code_of(client, referrer))
    payload = {**await registered_payload(runtime, referee.id), "device_id": device}
    await handle(runtime, payload)
    await nothing_written(runtime, referee.id)

    # The same sign-up from another device is credited, and that device is remembered for the referee.
    other = await register_member(client, referral_code=await code_of(client, referrer))
    await handle(runtime, {**await registered_payload(runtime, other.id), "device_id": f"install-{uniq()}"})
    assert len(await attributions_of(runtime, other.id)) == 1
    assert len(await sql(runtime, "SELECT 1 FROM member_devices WHERE member_id = :m", m=other.id)) == 1


async def test_unknown_code_attributes_nothing(client: httpx.AsyncClient, runtime: Runtime):
    referee = await register_member(client, referral_code="ZZZZ9999")
    await handle(runtime, await registered_payload(runtime, referee.id))
    await nothing_written(runtime, referee.id)


def test_self_referral_rules():
    def facts(**kw: Any) -> MemberFacts:
        base: dict[str, Any] = {
            "id": uuid.uuid4(),
            "referral_code": "X",
            "email": None,
            "phone": None,
            "country": None,
            "email_verified": False,
            "phone_verified": False,
            "kyc_status": "none",
        }
        return MemberFacts(**{**base, **kw})

    def user(**kw: Any) -> User:
        return User(id=kw.pop("id", uuid.uuid4()), email=kw.get("email"), phone=kw.get("phone"))

    assert (
        self_referral_reason(
            facts(phone="+919812345678"), user(phone="+919812345678"), device_on_referrer=False
        )
        is SelfReferral.same_phone
    )
    assert (
        self_referral_reason(
            facts(email="j.o.e+a@gmail.com"), user(email="joe@googlemail.com"), device_on_referrer=False
        )
        is SelfReferral.same_email
    )
    assert (
        self_referral_reason(
            facts(email="joe@example.com"), user(email="j.oe@example.com"), device_on_referrer=False
        )
        is None
    )  # dots matter outside Gmail
    assert self_referral_reason(facts(), user(), device_on_referrer=True) is SelfReferral.same_device
    assert canonical_email("First.Last+News@Example.COM") == "first.last@example.com"
