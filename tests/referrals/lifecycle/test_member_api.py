"""Member API: invitations (idempotent, duplicate lead, self-referral, the email), the list with its
filters and cursor, one referral with its timeline, stats, masking, and nobody else's referrals."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from referloop.runtime import Runtime
from tests.factories import Member, latest_message, register_member
from tests.referrals.helpers import Admin, sql
from tests.referrals.lifecycle.helpers import (
    Catalogue,
    lead_email,
    make_catalogue,
    report,
    run_jobs,
)


def headers(member: Member, key: str | None = None) -> dict[str, str]:
    return {**member.auth, "Idempotency-Key": key or str(uuid.uuid4())}


async def invite(client: httpx.AsyncClient, member: Member, cat: Catalogue, **body: Any) -> httpx.Response:
    payload = {"program_id": str(cat.program_id), "name": "Ravi Kumar", "email": lead_email(), **body}
    return await client.post("/v1/referrals", json=payload, headers=headers(member))


async def referral_rows(rt: Runtime, member: Member) -> list[dict[str, Any]]:
    return await sql(rt, "SELECT * FROM referrals WHERE member_id = :m", m=member.id)


class TestInvite:
    async def test_invitation_is_made_masked_and_emailed(
        self, client: httpx.AsyncClient, runtime: Runtime, admin: Admin
    ) -> None:
        cat = await make_catalogue(client, admin)
        referrer = await register_member(client)
        email = lead_email()
        r = await invite(client, referrer, cat, name="Ravi Shankar Kumar", email=email, phone="+919812345678")
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["state"] == "invited" and body["source"] == "invite"
        assert body["referee"] == {"name": "Ravi K.", "registered": False}
        assert body["campaign_id"] == str(cat.campaign_id)
        assert body["program"]["id"] == str(cat.program_id)
        assert email not in r.text and "Shankar" not in r.text and "9812345678" not in r.text
        [row] = await referral_rows(runtime, referrer)
        assert email not in str(row["lead_email"]) and "Ravi" not in str(row["lead_name"])  # encrypted

        message = await latest_message(runtime, email)
        assert message["template"] == "referral_invite"
        assert message["context"]["lead_name"] == "Ravi"
        assert message["context"]["link"].startswith(runtime.settings.public_base_url)
        events = await sql(
            runtime, "SELECT topic FROM outbox_events WHERE payload->>'referral_id' = :r", r=body["id"]
        )
        assert [e["topic"] for e in events] == ["referrals.referral_created"]

    async def test_a_retry_with_the_same_key_answers_the_first_invitation(
        self, client: httpx.AsyncClient, runtime: Runtime, admin: Admin
    ) -> None:
        cat = await make_catalogue(client, admin)
        referrer = await register_member(client)
        payload = {"program_id": str(cat.program_id), "name": "Asha Rao", "email": lead_email()}
        key = str(uuid.uuid4())
        first = await client.post("/v1/referrals", json=payload, headers=headers(referrer, key))
        again = await client.post("/v1/referrals", json=payload, headers=headers(referrer, key))
        assert first.status_code == again.status_code == 201
        assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
        assert len(await referral_rows(runtime, referrer)) == 1

    async def test_the_same_lead_for_the_same_program_is_refused_and_nothing_is_written(
        self, client: httpx.AsyncClient, runtime: Runtime, admin: Admin
    ) -> None:
        cat = await make_catalogue(client, admin)
        referrer, other = await register_member(client), await register_member(client)
        local = uuid.uuid4().hex[:10]
        assert (await invite(client, referrer, cat, email=f"{local}@gmail.com")).status_code == 201
        outbox_before = await sql(runtime, "SELECT count(*) AS n FROM outbox_events")
        # The same mailbox however written, by the same member or another one.
        for who, email in (
            (referrer, f"{local[:4]}.{local[4:]}@googlemail.com"),
            (other, f"{local}+x@gmail.com"),
        ):
            r = await invite(client, who, cat, email=email)
            assert r.status_code == 409, r.text
            assert r.json()["code"] == "duplicate_lead"
        assert len(await referral_rows(runtime, referrer)) == 1
        assert await referral_rows(runtime, other) == []
        assert await sql(runtime, "SELECT count(*) AS n FROM outbox_events") == outbox_before
        # Another program is fine.
        cat2 = await make_catalogue(client, admin)
        assert (await invite(client, referrer, cat2, email=f"{local}@gmail.com")).status_code == 201

    async def test_inviting_yourself_is_refused_and_nothing_is_written(
        self, client: httpx.AsyncClient, runtime: Runtime, admin: Admin
    ) -> None:
        cat = await make_catalogue(client, admin)
        referrer = await register_member(client)
        assert referrer.email is not None
        local, domain = referrer.email.split("@")
        r = await invite(client, referrer, cat, email=f"{local.upper()}+me@{domain}")
        assert r.status_code == 422 and r.json()["code"] == "self_referral"
        assert await referral_rows(runtime, referrer) == []
        assert (
            await sql(
                runtime,
                "SELECT 1 FROM audit_log WHERE actor_id = :m AND action = 'referrals.referral_created'",
                m=referrer.id,
            )
            == []
        )

    async def test_bad_input(self, client: httpx.AsyncClient, runtime: Runtime, admin: Admin) -> None:
        cat = await make_catalogue(client, admin)
        referrer = await register_member(client)
        assert (await invite(client, referrer, cat, email=None)).status_code == 422  # no contact
        assert (await invite(client, referrer, cat, program_id=str(uuid.uuid4()))).status_code == 404
        assert (await invite(client, referrer, cat, surprise=1)).status_code == 422
        r = await client.post(
            "/v1/referrals",
            json={"program_id": str(cat.program_id), "name": "X", "email": lead_email()},
            headers=referrer.auth,
        )
        assert r.status_code == 422  # no Idempotency-Key
        assert await referral_rows(runtime, referrer) == []


class TestReading:
    async def test_filters_pagination_timeline_and_stats(
        self, client: httpx.AsyncClient, runtime: Runtime, admin: Admin
    ) -> None:
        cat, cat2 = await make_catalogue(client, admin), await make_catalogue(client, admin)
        referrer = await register_member(client)
        emails = [lead_email() for _ in range(5)]
        ids = []
        for i, email in enumerate(emails):
            r = await invite(client, referrer, cat if i < 4 else cat2, email=email, name=f"Lead{i} Surname")
            ids.append(r.json()["id"])
        await report(runtime, cat.university_id, "application_submitted", email=emails[0])
        await report(runtime, cat.university_id, "enrolled", email=emails[1])
        await report(runtime, cat.university_id, "application_rejected", email=emails[2])
        await run_jobs(runtime)

        async def listed(**params: Any) -> list[str]:
            r = await client.get("/v1/referrals", params=params, headers=referrer.auth)
            assert r.status_code == 200, r.text
            return [i["id"] for i in r.json()["items"]]

        assert await listed() == ids[::-1]
        assert await listed(state="applied") == [ids[0]]
        assert await listed(state="enrolled") == [ids[1]]
        assert await listed(program_id=str(cat2.program_id)) == [ids[4]]
        future = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
        assert await listed(since=future) == []
        assert await listed(until=future) == ids[::-1]
        naive = await client.get(
            "/v1/referrals", params={"since": "2027-01-01T00:00:00"}, headers=referrer.auth
        )
        assert naive.status_code == 422 and "since" in naive.text  # which day is that? we don't guess

        seen, cursor = [], None
        while True:
            params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/v1/referrals", params=params, headers=referrer.auth)).json()
            seen += [i["id"] for i in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert seen == ids[::-1]
        assert all(i["referee"]["name"].endswith(" S.") for i in page["items"])

        detail = (await client.get(f"/v1/referrals/{ids[1]}", headers=referrer.auth)).json()
        assert [(t["from_state"], t["to_state"], t["actor"]) for t in detail["timeline"]] == [
            (None, "invited", "member"),
            ("invited", "applied", "partner"),
            ("applied", "enrolled", "partner"),
        ]
        [reward] = detail["rewards"]
        assert reward["status"] == "pending" and reward["amount"] == {"amount": 100_000, "currency": "INR"}
        assert emails[1] not in str(detail)

        stats = (await client.get("/v1/referrals/stats", headers=referrer.auth)).json()
        assert stats["total"] == 5
        assert stats["by_state"]["invited"] == 2 and stats["by_state"]["rejected"] == 1
        assert (stats["converted"], stats["conversion_rate"]) == (1, 0.2)
        assert stats["earnings"] == [
            {
                "currency": "INR",
                "pending": {"amount": 100_000, "currency": "INR"},
                "available": {"amount": 0, "currency": "INR"},
            }
        ]

    async def test_a_member_never_sees_another_members_referrals(
        self, client: httpx.AsyncClient, runtime: Runtime, admin: Admin
    ) -> None:
        cat = await make_catalogue(client, admin)
        a, b = await register_member(client), await register_member(client)
        made = (await invite(client, a, cat)).json()["id"]
        r = await client.get(f"/v1/referrals/{made}", headers=b.auth)
        assert r.status_code == 404 and r.json()["code"] == "referral_not_found"
        assert (await client.get("/v1/referrals", headers=b.auth)).json()["items"] == []
        assert (await client.get("/v1/referrals/stats", headers=b.auth)).json()["total"] == 0
        assert (await client.get(f"/v1/referrals/{uuid.uuid4()}", headers=a.auth)).status_code == 404
        assert (await client.get("/v1/referrals")).status_code == 401
        # A dispute about it: A may open one, B may not.
        r = await client.post(
            "/v1/disputes",
            json={
                "subject_type": "referral",
                "subject_id": made,
                "title": "Missing",
                "message": "The enrolment is missing.",
            },
            headers={**b.auth, "Idempotency-Key": str(uuid.uuid4())},
        )
        assert r.status_code == 404, r.text
        r = await client.post(
            "/v1/disputes",
            json={
                "subject_type": "referral",
                "subject_id": made,
                "title": "Missing",
                "message": "The enrolment is missing.",
            },
            headers={**a.auth, "Idempotency-Key": str(uuid.uuid4())},
        )
        assert r.status_code == 201, r.text
