"""Sign-ups: the register call carries the share link's click id (cookie or body) and the device id;
the attributed sign-up turns the referrer's invitation of that person into signed_up, or makes a
referral; a code sign-up gets its program from the partner's first report."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from referloop.core.ids import uuid7
from referloop.referrals.lifecycle.tasks import handle_signup_attributed
from referloop.referrals.tasks import handle_user_registered
from referloop.runtime import Runtime
from referloop.worker import load_task_modules
from tests.factories import register_member
from tests.referrals.helpers import Admin, sql
from tests.referrals.lifecycle.helpers import (
    fixed,
    make_catalogue,
    report,
    rewards,
    run_jobs,
    share_click,
    state_of,
)


async def outbox_payloads(rt: Runtime, topic: str, key: str, value: str) -> list[dict[str, Any]]:
    rows = await sql(
        rt,
        "SELECT payload FROM outbox_events WHERE topic = :t AND payload->>:k = :v ORDER BY id",
        t=topic,
        k=key,
        v=value,
    )
    return [r["payload"] for r in rows]


async def deliver_signup(rt: Runtime, referee_id: str) -> None:
    """What the worker does: identity's event -> attribution -> the lifecycle (each handler twice:
    a redelivery must change nothing)."""
    [registered] = await outbox_payloads(rt, "identity.user_registered", "user_id", referee_id)
    for _ in range(2):
        async with rt.db.sessionmaker() as session, session.begin():
            await handle_user_registered(session, rt, uuid7(), registered)
    for attributed in await outbox_payloads(rt, "referrals.signup_attributed", "referee_id", referee_id):
        for _ in range(2):
            async with rt.db.sessionmaker() as session, session.begin():
                await handle_signup_attributed(session, rt, uuid7(), attributed)


def test_the_worker_runs_the_signup_consumers() -> None:
    registry = load_task_modules()
    assert registry.get("referrals.attribute_signup") is not None
    assert registry.get("referrals.signup_referral") is not None


async def test_register_passes_the_click_cookie_and_device_id_on(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    click_id = str(uuid.uuid4())
    client.cookies.set(runtime.settings.click_cookie_name, click_id)
    try:
        member = await register_member(client, device_id="install-123")
    finally:
        client.cookies.clear()
    [payload] = await outbox_payloads(runtime, "identity.user_registered", "user_id", member.id)
    assert (payload["click_id"], payload["device_id"]) == (click_id, "install-123")
    body_click = str(uuid.uuid4())
    member = await register_member(client, click_id=body_click)
    [payload] = await outbox_payloads(runtime, "identity.user_registered", "user_id", member.id)
    assert (payload["click_id"], payload["device_id"]) == (body_click, None)
    r = await client.post(
        "/v1/auth/register",
        json={
            "email": "x@example.com",
            "password": "plum-orchard-42-lantern",
            "display_name": "X",
            "click_id": "no",
        },
    )
    assert r.status_code == 422


async def test_an_invited_lead_signing_up_through_the_link_moves_the_invitation_to_signed_up(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
) -> None:
    cat = await make_catalogue(client, admin)
    referrer = await register_member(client)
    local = uuid.uuid4().hex[:10]
    r = await client.post(
        "/v1/referrals",
        json={"program_id": str(cat.program_id), "name": "Meera Nair", "email": f"{local}@gmail.com"},
        headers={**referrer.auth, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert r.status_code == 201, r.text
    invited = r.json()["id"]

    click_id = await share_click(client, referrer, cat.program_id)
    # The same Gmail mailbox, written with dots and a +tag.
    dotted = f"{local[:3]}.{local[3:]}+uni@gmail.com"
    referee = await register_member(client, email=dotted, click_id=click_id)
    await deliver_signup(runtime, referee.id)

    rows = await sql(
        runtime, "SELECT id, state, referee_id, source FROM referrals WHERE member_id = :m", m=referrer.id
    )
    assert [(str(x["id"]), x["state"], str(x["referee_id"])) for x in rows] == [
        (invited, "signed_up", referee.id)
    ]
    detail = (await client.get(f"/v1/referrals/{invited}", headers=referrer.auth)).json()
    assert detail["referee"] == {"name": "Meera N.", "registered": True}
    assert [t["to_state"] for t in detail["timeline"]] == ["invited", "signed_up"]


async def test_a_code_sign_up_gets_its_program_from_the_partners_report(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
) -> None:
    # The campaign pays the referee a sign-up bonus, and the referrer at enrolment.
    cat = await make_catalogue(
        client, admin, rules=[fixed("signed_up", "referee", 5_000), fixed("enrolled", "referrer", 100_000)]
    )
    referrer = await register_member(client)
    code = (await client.get("/v1/me", headers=referrer.auth)).json()["referral_code"]
    referee = await register_member(client, referral_code=code)
    await deliver_signup(runtime, referee.id)
    [row] = await sql(runtime, "SELECT * FROM referrals WHERE referee_id = :r", r=referee.id)
    assert (row["state"], row["program_id"], row["source"]) == ("signed_up", None, "signup")
    assert await rewards(runtime, row["id"]) == []  # no program yet, so no campaign to pay it
    listed = (await client.get("/v1/referrals", headers=referrer.auth)).json()["items"]
    assert listed[0]["program"] is None and listed[0]["referee"]["name"] == "Test M."

    # A partner of another university cannot adopt it; this one can, naming its program.
    other = await make_catalogue(client, admin)
    miss = await report(runtime, other.university_id, "application_submitted", email=referee.email)
    assert miss.status == "not_found"
    hit = await report(runtime, cat.university_id, "enrolled", email=referee.email, program_id=cat.program_id)
    assert (hit.status, hit.state, hit.referral_id) == ("applied", "enrolled", row["id"])
    [row] = await sql(runtime, "SELECT program_id, campaign_id FROM referrals WHERE id = :r", r=row["id"])
    assert (row["program_id"], row["campaign_id"]) == (cat.program_id, cat.campaign_id)
    await run_jobs(runtime)
    # The sign-up it reached before it had a campaign is rewarded too, once.
    assert [(w["milestone"], w["role"], w["status"]) for w in await rewards(runtime, hit.referral_id)] == [
        ("enrolled", "referrer", "pending"),
        ("signed_up", "referee", "pending"),
    ]
    assert await state_of(runtime, hit.referral_id) == "enrolled"


async def test_an_applicant_the_partner_reported_from_a_click_who_then_signs_up_stays_one_referral(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
) -> None:
    cat = await make_catalogue(
        client,
        admin,
        rules=[
            fixed("signed_up", "referrer", 1_000),
            fixed("applied", "referrer", 5_000),
            fixed("enrolled", "referrer", 100_000),
        ],
    )
    referrer = await register_member(client)
    click_id = await share_click(client, referrer, cat.program_id)
    applied = await report(runtime, cat.university_id, "application_submitted", click_id=click_id)
    assert (applied.status, applied.state) == ("applied", "applied")

    # The applicant registers in the same browser (the link's cookie), then enrols.
    client.cookies.set(runtime.settings.click_cookie_name, click_id)
    try:
        referee = await register_member(client, display_name="Meera Nair")
    finally:
        client.cookies.clear()
    await deliver_signup(runtime, referee.id)
    done = await report(runtime, cat.university_id, "enrolled", click_id=click_id)
    assert (done.status, done.state, done.referral_id) == ("applied", "enrolled", applied.referral_id)
    await run_jobs(runtime)

    listed = (await client.get("/v1/referrals", headers=referrer.auth)).json()["items"]
    assert [(i["id"], i["state"], i["referee"]) for i in listed] == [
        (str(applied.referral_id), "enrolled", {"name": "Meera N.", "registered": True})
    ]
    assert [
        (w["milestone"], w["role"], w["status"]) for w in await rewards(runtime, applied.referral_id)
    ] == [
        ("applied", "referrer", "pending"),
        ("enrolled", "referrer", "pending"),
        ("signed_up", "referrer", "pending"),  # the sign-up came after the application: still paid
    ]
    detail = (await client.get(f"/v1/referrals/{applied.referral_id}", headers=referrer.auth)).json()
    assert [t["to_state"] for t in detail["timeline"]] == ["invited", "applied", "applied", "enrolled"]


async def test_an_invitation_the_partner_moved_to_applied_is_taken_over_by_the_sign_up(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
) -> None:
    cat = await make_catalogue(
        client, admin, rules=[fixed("applied", "referrer", 5_000), fixed("enrolled", "referrer", 100_000)]
    )
    referrer = await register_member(client)
    email = f"{uuid.uuid4().hex[:10]}@example.com"
    r = await client.post(
        "/v1/referrals",
        json={"program_id": str(cat.program_id), "name": "Meera Nair", "email": email},
        headers={**referrer.auth, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert r.status_code == 201, r.text
    invited = r.json()["id"]
    assert (await report(runtime, cat.university_id, "application_submitted", email=email)).state == "applied"

    click_id = await share_click(client, referrer, cat.program_id)
    referee = await register_member(client, email=email, click_id=click_id)
    await deliver_signup(runtime, referee.id)
    done = await report(runtime, cat.university_id, "enrolled", email=email)
    assert (done.state, str(done.referral_id)) == ("enrolled", invited)
    await run_jobs(runtime)

    rows = await sql(
        runtime, "SELECT id, state, referee_id FROM referrals WHERE member_id = :m", m=referrer.id
    )
    assert [(str(x["id"]), x["state"], str(x["referee_id"])) for x in rows] == [
        (invited, "enrolled", referee.id)
    ]
    assert [w["milestone"] for w in await rewards(runtime, done.referral_id)] == ["applied", "enrolled"]
