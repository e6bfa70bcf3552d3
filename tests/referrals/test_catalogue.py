"""The public program catalogue and the staff writes behind it."""

from __future__ import annotations

import httpx
import pytest

from referloop.referrals.service import catalogue
from referloop.runtime import Runtime
from tests.factories import register_member
from tests.referrals.helpers import Admin, audit_actions, create_program, create_university, sql, uniq


async def test_programs_filter_by_country_level_intake_and_university(
    client: httpx.AsyncClient, admin: Admin
):
    uni = await create_university(client, admin, country="GB")
    other = await create_university(client, admin, country="GB")
    ug = await create_program(client, admin, uni["id"], level="undergraduate", intakes=["2027-09-15"])
    pg = await create_program(client, admin, uni["id"], level="postgraduate", intakes=["2028-01-10"])
    elsewhere = await create_program(
        client, admin, other["id"], level="postgraduate", country="IE", intakes=["2027-09-01"]
    )

    r = await client.get("/v1/programs", params={"university": uni["id"]})
    assert r.status_code == 200
    assert [p["id"] for p in r.json()["items"]] == [pg["id"], ug["id"]]  # newest first

    r = await client.get("/v1/programs", params={"university": uni["slug"], "level": "postgraduate"})
    assert [p["id"] for p in r.json()["items"]] == [pg["id"]]

    r = await client.get("/v1/programs", params={"university": uni["slug"], "intake": "2027-09"})
    assert [p["id"] for p in r.json()["items"]] == [ug["id"]]
    r = await client.get("/v1/programs", params={"university": uni["slug"], "intake": "2028-01-10"})
    assert [p["id"] for p in r.json()["items"]] == [pg["id"]]

    r = await client.get("/v1/programs", params={"university": other["id"], "country": "ie"})
    assert [p["id"] for p in r.json()["items"]] == [elsewhere["id"]]
    r = await client.get("/v1/programs", params={"university": other["id"], "country": "GB"})
    assert r.json()["items"] == []

    body = (await client.get(f"/v1/programs/{ug['id']}")).json()
    assert body["fee"] == {"amount": 45_000_000, "currency": "INR"}
    assert body["university"] == {"id": uni["id"], "name": uni["name"], "slug": uni["slug"]}
    assert body["country"] == "GB"  # defaults to the university's
    assert body["intakes"] == ["2027-09-15"]

    r = await client.get("/v1/programs", params={"intake": "September"})
    assert r.status_code == 422


async def test_programs_cursor_pagination_visits_each_program_once(client: httpx.AsyncClient, admin: Admin):
    uni = await create_university(client, admin)
    made = [(await create_program(client, admin, uni["id"]))["id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"university": uni["id"], "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/programs", params=params)).json()
        assert len(page["items"]) <= 2
        seen += [p["id"] for p in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(made))
    r = await client.get("/v1/programs", params={"cursor": "not-a-cursor"})
    assert r.status_code == 422


async def test_search_tolerates_typos_and_ranks_best_match_first(client: httpx.AsyncClient, admin: Admin):
    tag = uniq()
    uni = await create_university(client, admin, name=f"Northfield {tag} University")
    cs = await create_program(client, admin, uni["id"], name="Bachelor of Computer Science")
    await create_program(client, admin, uni["id"], name="Master of Business Administration")
    await create_program(client, admin, uni["id"], name="Diploma in Nursing", level="diploma")

    r = await client.get("/v1/programs", params={"q": "compter science", "university": uni["id"]})
    assert r.status_code == 200
    assert [p["id"] for p in r.json()["items"]] == [cs["id"]]

    # The university's name is searched too; the closest program comes first, pages follow the score.
    r = await client.get("/v1/programs", params={"q": f"northfeld {tag} computer", "limit": 1})
    first = r.json()
    assert first["items"][0]["id"] == cs["id"]
    assert first["next_cursor"]
    nxt = await client.get(
        "/v1/programs", params={"q": f"northfeld {tag} computer", "limit": 1, "cursor": first["next_cursor"]}
    )
    assert nxt.status_code == 200
    assert all(p["id"] != cs["id"] for p in nxt.json()["items"])

    r = await client.get("/v1/programs", params={"q": "zzqxv wwkjh", "university": uni["id"]})
    assert r.json()["items"] == []


async def test_program_search_uses_the_trigram_index(runtime: Runtime):
    rows = await sql(
        runtime, "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_programs_search_text_trgm'"
    )
    assert "gin" in rows[0]["indexdef"] and "gin_trgm_ops" in rows[0]["indexdef"]


async def test_retired_programs_and_universities_leave_the_catalogue(
    client: httpx.AsyncClient, admin: Admin, runtime: Runtime
):
    uni = await create_university(client, admin)
    keep = await create_program(client, admin, uni["id"])
    gone = await create_program(client, admin, uni["id"])
    r = await client.delete(f"/v1/staff/programs/{gone['id']}", headers=admin.auth)
    assert r.status_code == 200 and r.json()["retired"] is True
    assert (await client.get(f"/v1/programs/{gone['id']}")).status_code == 404
    ids = [
        p["id"] for p in (await client.get("/v1/programs", params={"university": uni["id"]})).json()["items"]
    ]
    assert ids == [keep["id"]]
    assert await audit_actions(runtime, gone["id"]) == [
        "referrals.program_created",
        "referrals.program_retired",
    ]

    inactive = await create_program(client, admin, uni["id"], active=False)
    assert (await client.get(f"/v1/programs/{inactive['id']}")).status_code == 404

    r = await client.delete(f"/v1/staff/universities/{uni['id']}", headers=admin.auth)
    assert r.status_code == 200
    assert (await client.get(f"/v1/programs/{keep['id']}")).status_code == 404
    assert (await client.get("/v1/programs", params={"university": uni["id"]})).json()["items"] == []


async def test_staff_edits_are_audited_with_before_and_after(
    client: httpx.AsyncClient, admin: Admin, runtime: Runtime
):
    uni = await create_university(client, admin)
    program = await create_program(client, admin, uni["id"], name="BSc Physics")
    r = await client.patch(
        f"/v1/staff/programs/{program['id']}",
        headers=admin.auth,
        json={"name": "BSc Astrophysics", "fee": {"amount": 100, "currency": "usd"}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "BSc Astrophysics" and r.json()["fee"] == {"amount": 100, "currency": "USD"}
    rows = await sql(
        runtime,
        "SELECT actor_id, actor_type, before, after FROM audit_log WHERE target_id = :t"
        " AND action = 'referrals.program_updated'",
        t=program["id"],
    )
    assert len(rows) == 1
    assert str(rows[0]["actor_id"]) == admin.id and rows[0]["actor_type"] == "staff"
    assert rows[0]["before"]["name"] == "BSc Physics" and rows[0]["after"]["name"] == "BSc Astrophysics"
    assert rows[0]["after"]["fee_currency"] == "USD"

    found = (await client.get("/v1/programs", params={"q": "astrophysics", "university": uni["id"]})).json()
    assert [p["id"] for p in found["items"]] == [program["id"]]


async def test_members_cannot_write_the_catalogue(client: httpx.AsyncClient, admin: Admin, runtime: Runtime):
    member = await register_member(client)
    slug = f"uni-{uniq()}"
    r = await client.post(
        "/v1/staff/universities",
        headers=member.auth,
        json={"name": "Sneaky U", "slug": slug, "country": "IN"},
    )
    assert r.status_code == 403
    assert r.headers["content-type"].startswith("application/problem+json")
    assert await sql(runtime, "SELECT id FROM universities WHERE slug = :s", s=slug) == []

    uni = await create_university(client, admin)
    program = await create_program(client, admin, uni["id"])
    r = await client.patch(
        f"/v1/staff/programs/{program['id']}", headers=member.auth, json={"name": "Hacked"}
    )
    assert r.status_code == 403
    r = await client.delete(f"/v1/staff/programs/{program['id']}", headers=member.auth)
    assert r.status_code == 403
    assert (await client.get(f"/v1/programs/{program['id']}")).json()["name"] == program["name"]
    assert await audit_actions(runtime, program["id"]) == ["referrals.program_created"]
    r = await client.post("/v1/staff/universities", json={"name": "Anon U", "slug": slug, "country": "IN"})
    assert r.status_code == 401


async def test_slugs_are_unique_among_live_rows(client: httpx.AsyncClient, admin: Admin):
    uni = await create_university(client, admin)
    r = await client.post(
        "/v1/staff/universities",
        headers=admin.auth,
        json={"name": "Again", "slug": uni["slug"], "country": "IN"},
    )
    assert r.status_code == 409 and r.json()["code"] == "slug_taken"
    program = await create_program(client, admin, uni["id"])
    r = await client.post(
        "/v1/staff/programs",
        headers=admin.auth,
        json={
            "university_id": uni["id"],
            "name": "Dup",
            "slug": program["slug"],
            "level": "diploma",
            "fee": {"amount": 1, "currency": "INR"},
            "landing_url": "https://uni.example.edu/dup",
        },
    )
    assert r.status_code == 409
    # A retired slug is free again.
    assert (await client.delete(f"/v1/staff/universities/{uni['id']}", headers=admin.auth)).status_code == 200
    r = await client.post(
        "/v1/staff/universities",
        headers=admin.auth,
        json={"name": "Reborn", "slug": uni["slug"], "country": "IN"},
    )
    assert r.status_code == 201


async def test_program_input_is_validated(client: httpx.AsyncClient, admin: Admin):
    uni = await create_university(client, admin)
    base = {
        "university_id": uni["id"],
        "name": "X",
        "slug": "x-prog",
        "level": "undergraduate",
        "fee": {"amount": 1, "currency": "INR"},
        "landing_url": "https://uni.example.edu/x",
    }
    for bad in (
        {"level": "phd"},
        {"fee": {"amount": -1, "currency": "INR"}},
        {"landing_url": "javascript:alert(1)"},
        {"slug": "Not A Slug"},
        {"unknown": 1},
    ):
        r = await client.post("/v1/staff/programs", headers=admin.auth, json={**base, **bad})
        assert r.status_code == 422, (bad, r.text)


async def test_a_slug_taken_between_check_and_update_answers_409_like_create(
    client: httpx.AsyncClient, admin: Admin, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
):
    uni, other = await create_university(client, admin), await create_university(client, admin)
    program, sibling = (
        await create_program(client, admin, uni["id"]),
        await create_program(client, admin, uni["id"]),
    )
    created = await client.post(
        "/v1/staff/universities",
        headers=admin.auth,
        json={"name": "Again", "slug": uni["slug"], "country": "IN"},
    )
    assert created.status_code == 409

    # The pre-check passes, as it does for the loser of two edits racing for one slug.
    async def free(*args: object, **kwargs: object) -> None:
        return None

    monkeypatch.setattr(catalogue, "_university_slug_free", free)
    monkeypatch.setattr(catalogue, "_program_slug_free", free)
    r = await client.patch(
        f"/v1/staff/universities/{other['id']}", headers=admin.auth, json={"slug": uni["slug"]}
    )
    assert r.status_code == 409 and r.headers["content-type"].startswith("application/problem+json")
    assert (r.json()["type"], r.json()["code"]) == (created.json()["type"], "slug_taken")
    r = await client.patch(
        f"/v1/staff/programs/{sibling['id']}", headers=admin.auth, json={"slug": program["slug"]}
    )
    assert r.status_code == 409 and r.json()["code"] == "slug_taken"
    rows = await sql(runtime, "SELECT slug FROM programs WHERE id = :p", p=sibling["id"])
    assert rows == [{"slug": sibling["slug"]}]
    assert await sql(runtime, "SELECT slug FROM universities WHERE id = :u", u=other["id"]) == [
        {"slug": other["slug"]}
    ]
