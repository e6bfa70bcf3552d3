"""Outcome batches and files from partners: a result per item, a bad item never fails the batch,
a partner only ever touches its own university's referrals, limits, replays, CSV reports."""

from __future__ import annotations

import csv
import io
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from referloop.core.errors import Conflict
from referloop.runtime import Runtime
from tests.factories import Member, asgi_client, new_email
from tests.referrals.helpers import Admin, sql
from tests.referrals.partner.helpers import (
    Partner,
    create_key,
    invite,
    make_partner,
    new_member,
    outcome,
)

OUTCOMES = "/partner/v1/outcomes"
CSV_URL = "/partner/v1/outcomes.csv"


async def referral_state(client: httpx.AsyncClient, member: Member, referral_id: str) -> str:
    r = await client.get(f"/v1/referrals/{referral_id}", headers=member.auth)
    assert r.status_code == 200, r.text
    state: str = r.json()["state"]
    return state


async def report(
    client: httpx.AsyncClient, partner: Partner, items: list[Any], key: str | None = None
) -> httpx.Response:
    return await client.post(OUTCOMES, json={"items": items}, headers=partner.headers(key))


async def test_each_item_gets_its_own_result_and_a_bad_one_never_fails_the_batch(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
) -> None:
    partner = await make_partner(client, admin)
    member = await new_member(client)
    email = new_email()
    first = await invite(client, member, partner.program_id)
    second = await invite(client, member, partner.program_id, email=email)
    submitted = outcome("application_submitted", referral_id=first["id"])
    items: list[Any] = [
        submitted,
        {
            "external_id": "APP-bad",
            "type": "graduated",
            "occurred_at": "2026-11-01T10:00:00Z",
            "email": "x@y.z",
        },
        outcome("enrolled", email=email.upper(), fee={"amount": 45_000_000, "currency": "inr"}),
        outcome("enrolled", referral_id=str(uuid.uuid4())),
        "not an object",
        outcome("enrolled", external_id="APP-nomatch"),  # nothing to match it by
        dict(submitted),  # the same external id and type again
    ]
    r = await report(client, partner, items)
    assert r.status_code == 200, r.text
    body = r.json()
    results = body["items"]
    assert [x["index"] for x in results] == list(range(len(items)))
    assert [x["status"] for x in results] == [
        "applied",
        "invalid",
        "applied",
        "not_found",
        "invalid",
        "invalid",
        "duplicate",
    ]
    assert results[0]["referral_id"] == first["id"] and results[0]["state"] == "applied"
    assert results[1]["external_id"] == "APP-bad" and [e["field"] for e in results[1]["errors"]] == ["type"]
    assert results[2]["referral_id"] == second["id"] and results[2]["state"] == "enrolled"
    assert results[3]["reason"]
    assert results[6]["referral_id"] == first["id"]
    assert body["received"] == 7
    assert body["counts"] == {
        "applied": 2,
        "duplicate": 1,
        "stale": 0,
        "not_found": 1,
        "refused": 0,
        "invalid": 3,
        "error": 0,
    }
    assert await referral_state(client, member, first["id"]) == "applied"
    assert await referral_state(client, member, second["id"]) == "enrolled"

    rows = await sql(
        runtime,
        "SELECT action, actor_type, after FROM audit_log WHERE actor_id = :k AND action LIKE 'partner.%' ORDER BY created_at, id",
        k=uuid.UUID(partner.key_id),
    )
    assert rows[-1]["action"] == "partner.outcomes_reported" and rows[-1]["actor_type"] == "partner"
    assert rows[-1]["after"]["items"] == 7 and rows[-1]["after"]["counts"]["applied"] == 2


async def test_a_key_of_university_a_cannot_report_on_university_b(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
) -> None:
    partner_a = await make_partner(client, admin)
    partner_b = await make_partner(client, admin)
    member = await new_member(client)
    email = new_email()
    referral_b = await invite(client, member, partner_b.program_id, email=email)

    r = await report(
        client,
        partner_a,
        [
            outcome("enrolled", referral_id=referral_b["id"]),
            outcome("enrolled", email=email),
            outcome("application_submitted", email=email, program_id=partner_b.program_id),
        ],
    )
    assert r.status_code == 200
    assert [x["status"] for x in r.json()["items"]] == ["not_found"] * 3
    assert all(x["referral_id"] is None and x["state"] is None for x in r.json()["items"])
    assert await referral_state(client, member, referral_b["id"]) == "invited"
    history = await sql(
        runtime,
        "SELECT count(*) AS n FROM referral_events WHERE referral_id = :r",
        r=uuid.UUID(referral_b["id"]),
    )
    assert history[0]["n"] == 1  # only its creation

    # The same report from B's own key applies.
    r = await report(client, partner_b, [outcome("enrolled", referral_id=referral_b["id"])])
    assert r.json()["items"][0]["status"] == "applied"
    assert await referral_state(client, member, referral_b["id"]) == "enrolled"


async def test_batch_limits_and_idempotency_key(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
) -> None:
    partner = await make_partner(client, admin)
    member = await new_member(client)
    referral = await invite(client, member, partner.program_id)
    item = outcome("enrolled", referral_id=referral["id"])

    r = await report(client, partner, [item] + [outcome("enrolled", email=new_email()) for _ in range(1000)])
    assert r.status_code == 422 and r.json()["code"] == "validation_error"
    assert r.json()["errors"][0]["field"] == "items"
    assert (await report(client, partner, [])).status_code == 422
    r = await client.post(
        OUTCOMES, json={"items": [item]}, headers={"Authorization": f"Bearer {partner.key}"}
    )
    assert r.status_code == 422 and r.json()["errors"][0]["location"] == "header"
    # None of those refused calls changed anything or left an audit row.
    assert await referral_state(client, member, referral["id"]) == "invited"
    rows = await sql(
        runtime, "SELECT count(*) AS n FROM audit_log WHERE actor_id = :k", k=uuid.UUID(partner.key_id)
    )
    assert rows[0]["n"] == 0

    # 1,000 items is the limit, and it is accepted.
    r = await report(client, partner, [item] + [outcome("enrolled", email=new_email()) for _ in range(999)])
    assert r.status_code == 200
    assert r.json()["counts"]["applied"] == 1 and r.json()["counts"]["not_found"] == 999


async def test_a_retried_batch_replays_its_first_answer(client: httpx.AsyncClient, admin: Admin) -> None:
    partner = await make_partner(client, admin)
    member = await new_member(client)
    referral = await invite(client, member, partner.program_id)
    items = [outcome("application_submitted", referral_id=referral["id"])]
    key = str(uuid.uuid4())
    first = await report(client, partner, items, key=key)
    assert first.status_code == 200 and first.json()["items"][0]["status"] == "applied"
    again = await report(client, partner, items, key=key)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    # The replay also answers a rotated key of the same university.
    r = await client.post(f"/v1/staff/partner-keys/{partner.key_id}/rotate", headers=admin.auth)
    rotated = Partner(partner.university_id, partner.program_id, r.json()["key"], r.json()["id"])
    assert (await report(client, rotated, items, key=key)).json() == first.json()
    # The same key with another body is refused.
    r = await report(client, partner, [outcome("enrolled", referral_id=referral["id"])], key=key)
    assert r.status_code == 422 and r.json()["code"] == "idempotency_key_reused"
    assert await referral_state(client, member, referral["id"]) == "applied"


async def test_outcomes_out_of_order(client: httpx.AsyncClient, admin: Admin) -> None:
    partner = await make_partner(client, admin)
    member = await new_member(client)
    referral = await invite(client, member, partner.program_id)
    r = await report(client, partner, [outcome("enrolled", referral_id=referral["id"])])
    assert r.json()["items"][0]["state"] == "enrolled"
    r = await report(client, partner, [outcome("application_submitted", referral_id=referral["id"])])
    assert r.json()["items"][0]["status"] == "stale" and r.json()["items"][0]["state"] == "enrolled"
    assert await referral_state(client, member, referral["id"]) == "enrolled"


def csv_body(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode()


async def test_csv_file_gets_a_report_of_accepted_and_refused_rows(
    client: httpx.AsyncClient, admin: Admin
) -> None:
    partner = await make_partner(client, admin)
    member = await new_member(client)
    email = new_email()
    first = await invite(client, member, partner.program_id)
    second = await invite(client, member, partner.program_id, email=email)
    data = csv_body(
        [
            ["external_id", "type", "occurred_at", "referral_id", "email", "fee_amount", "fee_currency"],
            ["R-1", "application_submitted", "2026-11-01T10:00:00Z", first["id"], "", "", ""],
            ["=HYPERLINK(1)", "graduated", "2026-11-01T10:00:00Z", first["id"], "", "", ""],
            ["R-3", "enrolled", "2026-11-01T10:00:00Z"],
            [],
            ["R-5", "enrolled", "2026-11-02T10:00:00Z", "", email, "45000000", "INR"],
            ["R-6", "enrolled", "2026-11-02T10:00:00Z", "", "", "12.5", "INR"],
        ]
    )
    r = await client.post(
        CSV_URL, files={"file": ("outcomes.csv", data, "text/csv")}, headers=partner.headers()
    )
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [(x["row"], x["status"]) for x in items] == [
        (2, "applied"),
        (3, "invalid"),
        (4, "invalid"),
        (6, "applied"),
        (7, "invalid"),
    ]
    assert "cells" in items[2]["reason"]
    assert items[3]["referral_id"] == second["id"] and items[3]["state"] == "enrolled"
    assert {e["field"] for e in items[4]["errors"]} >= {"fee.amount"}

    # The same rows as a text/csv body, with the report as CSV (cells a spreadsheet would run are quoted).
    again = data.replace(b"R-", b"S-")
    r = await client.post(
        CSV_URL,
        content=again,
        headers={**partner.headers(), "Content-Type": "text/csv", "Accept": "text/csv"},
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    report_rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["status"] for row in report_rows] == [
        "duplicate",
        "invalid",
        "invalid",
        "duplicate",
        "invalid",
    ]
    assert report_rows[1]["external_id"] == "'=HYPERLINK(1)" and "type" in report_rows[1]["reason"]
    assert report_rows[0]["row"] == "2" and report_rows[0]["referral_id"] == first["id"]


async def test_csv_file_level_refusals(client: httpx.AsyncClient, admin: Admin, app_factory: Any) -> None:
    partner = await make_partner(client, admin)
    text_csv = {**partner.headers(), "Content-Type": "text/csv"}
    for data, code in (
        (b"external_id,type,occurred_at,colour\nA,enrolled,2026-11-01T00:00:00Z,red\n", "csv_refused"),
        (b"external_id,type\nA,enrolled\n", "csv_refused"),
        (b"external_id,type,occurred_at\n", "csv_refused"),
        (b"", "csv_refused"),
        (b"\xff\xfe\x00bad", "csv_refused"),
    ):
        r = await client.post(
            CSV_URL, content=data, headers={**text_csv, "Idempotency-Key": str(uuid.uuid4())}
        )
        assert r.status_code == 422, (data, r.text)
        assert r.json()["code"] == code
    r = await client.post(CSV_URL, json={"items": []}, headers=partner.headers())
    assert r.status_code == 415

    small: FastAPI = app_factory(partner_csv_max_bytes=1024, partner_csv_max_rows=2)
    async with asgi_client(small) as c:
        big = b"external_id,type,occurred_at\n" + b"A,enrolled,2026-11-01T00:00:00Z\n" * 100
        r = await c.post(CSV_URL, content=big, headers=text_csv)
        assert r.status_code == 413 and r.json()["code"] == "payload_too_large"
        r = await c.post(CSV_URL, files={"file": ("o.csv", big, "text/csv")}, headers=partner.headers())
        assert r.status_code == 413
        three = b"external_id,type,occurred_at\n" + b"A,enrolled,2026-11-01T00:00:00Z\n" * 3
        r = await c.post(CSV_URL, content=three, headers={**text_csv, "Idempotency-Key": str(uuid.uuid4())})
        assert r.status_code == 422 and "more than 2 rows" in r.json()["detail"]


async def test_another_key_of_the_same_university_reports_too(
    client: httpx.AsyncClient, admin: Admin
) -> None:
    partner = await make_partner(client, admin)
    second = await create_key(client, admin, partner.university_id)
    member = await new_member(client)
    referral = await invite(client, member, partner.program_id)
    other = Partner(partner.university_id, partner.program_id, second["key"], second["id"])
    r = await report(client, other, [outcome("application_submitted", referral_id=referral["id"])])
    assert r.json()["items"][0]["status"] == "applied"


async def test_an_item_that_fails_is_undone_alone(
    client: httpx.AsyncClient, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An item whose application raises (after writing) loses its own writes and nothing else."""
    import referloop.referrals.lifecycle.service as lifecycle
    from referloop.referrals.partner.service import outcomes as partner_outcomes

    real = lifecycle.apply_partner_outcome

    async def flaky(session: Any, rt: Any, report: Any, ctx: Any, **kw: Any) -> Any:
        result = await real(session, rt, report, ctx, **kw)
        if report.external_ref == "BOOM":
            raise RuntimeError("the database went away mid-item")
        if report.external_ref == "NOPE":
            raise Conflict("not now")
        return result

    async def failing_set(*args: Any, **kw: Any) -> Any:
        # The set path writes, then fails: the batch falls back to item by item.
        await real_set(*args, **kw)
        raise RuntimeError("a set statement failed")

    real_set = partner_outcomes.apply_partner_outcomes
    monkeypatch.setattr(lifecycle, "apply_partner_outcome", flaky)
    monkeypatch.setattr(partner_outcomes, "apply_partner_outcome", flaky)
    monkeypatch.setattr(partner_outcomes, "apply_partner_outcomes", failing_set)

    partner = await make_partner(client, admin)
    member = await new_member(client)
    refs = [await invite(client, member, partner.program_id) for _ in range(4)]
    r = await report(
        client,
        partner,
        [
            outcome("enrolled", referral_id=refs[0]["id"]),
            outcome("enrolled", "BOOM", referral_id=refs[1]["id"]),
            outcome("enrolled", "NOPE", referral_id=refs[2]["id"]),
            outcome("application_submitted", referral_id=refs[3]["id"]),
        ],
    )
    assert r.status_code == 200, r.text
    assert [x["status"] for x in r.json()["items"]] == ["applied", "error", "refused", "applied"]
    assert r.json()["items"][2]["reason"] == "not now"
    states = [await referral_state(client, member, ref["id"]) for ref in refs]
    assert states == ["enrolled", "invited", "invited", "applied"]
