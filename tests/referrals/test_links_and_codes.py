"""Share links and vanity codes."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from referloop.referrals.service import codes
from referloop.runtime import Runtime
from tests.factories import register_member
from tests.referrals.helpers import BROWSER_UA, Admin, create_program, create_university, sql, uniq


@pytest.fixture
async def program(client: httpx.AsyncClient, admin: Admin) -> dict:
    uni = await create_university(client, admin)
    return await create_program(client, admin, uni["id"])


async def links_by_program(client: httpx.AsyncClient, auth: dict[str, str]) -> dict[str, dict]:
    found: dict[str, dict] = {}
    cursor = None
    while True:
        r = await client.get(
            "/v1/referrals/links",
            params={"limit": 200, **({"cursor": cursor} if cursor else {})},
            headers=auth,
        )
        assert r.status_code == 200, r.text
        found.update({link["program_id"]: link for link in r.json()["items"]})
        cursor = r.json()["next_cursor"]
        if not cursor:
            return found


async def test_links_give_a_short_link_per_active_program(
    client: httpx.AsyncClient, admin: Admin, program: dict, runtime: Runtime
):
    member = await register_member(client)
    me = (await client.get("/v1/me", headers=member.auth)).json()
    links = await links_by_program(client, member.auth)
    link = links[program["id"]]
    base = runtime.settings.public_base_url.rstrip("/")
    assert link["slug"] == f"{me['referral_code']}-{program['short_code']}"
    assert link["url"] == f"{base}/r/{link['slug']}"
    assert link["program_name"] == program["name"] and link["code"] == me["referral_code"]

    assert (await client.delete(f"/v1/staff/programs/{program['id']}", headers=admin.auth)).status_code == 200
    assert program["id"] not in await links_by_program(client, member.auth)
    assert (await client.get("/v1/referrals/links")).status_code == 401


async def test_vanity_code_becomes_the_link_code_and_is_case_insensitive(
    client: httpx.AsyncClient, program: dict
):
    member = await register_member(client)
    code = f"Asha{uniq()[:8]}"
    r = await client.put("/v1/referrals/vanity-code", json={"code": code}, headers=member.auth)
    assert r.status_code == 200, r.text
    assert r.json()["code"] == code and r.json()["status"] == "active"
    assert (await client.get("/v1/referrals/vanity-code", headers=member.auth)).json()["code"] == code
    link = (await links_by_program(client, member.auth))[program["id"]]
    assert link["code"] == code and link["slug"] == f"{code}-{program['short_code']}"

    # The same code in another case is someone else's attempt at the same code.
    other = await register_member(client)
    r = await client.put("/v1/referrals/vanity-code", json={"code": code.upper()}, headers=other.auth)
    assert r.status_code == 409 and r.json()["code"] == "vanity_code_taken"
    assert (await client.get("/v1/referrals/vanity-code", headers=other.auth)).status_code == 404

    # Setting the same code again is a no-op; the visitor may type it in any case.
    assert (
        await client.put("/v1/referrals/vanity-code", json={"code": code}, headers=member.auth)
    ).status_code == 200
    r = await client.get(
        f"/r/{code.lower()}-{program['short_code'].lower()}", headers={"User-Agent": BROWSER_UA}
    )
    assert r.status_code == 302 and f"ref={code}" in r.headers["location"]


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("abc", 422),  # too short
        ("a" * 21, 422),  # too long
        ("has space", 422),
        ("dash-code", 422),
        ("émile", 422),
        ("admin", 422),  # on the block list
        ("ADM1N", 422),  # the same word read the Crockford way
        ("Referloop", 422),
    ],
)
async def test_vanity_code_rules(client: httpx.AsyncClient, code: str, status: int, runtime: Runtime):
    member = await register_member(client)
    r = await client.put("/v1/referrals/vanity-code", json={"code": code}, headers=member.auth)
    assert r.status_code == status, r.text
    assert await sql(runtime, "SELECT id FROM vanity_codes WHERE member_id = :m", m=member.id) == []


async def test_vanity_code_cannot_be_someone_elses_member_code(client: httpx.AsyncClient, runtime: Runtime):
    victim = await register_member(client)
    victim_code = (await client.get("/v1/me", headers=victim.auth)).json()["referral_code"]
    member = await register_member(client)
    r = await client.put("/v1/referrals/vanity-code", json={"code": victim_code.lower()}, headers=member.auth)
    assert r.status_code == 409
    assert await sql(runtime, "SELECT id FROM vanity_codes WHERE member_id = :m", m=member.id) == []


async def test_changing_vanity_code_keeps_old_links_and_reserves_the_old_code(
    client: httpx.AsyncClient, program: dict
):
    member = await register_member(client)
    first, second = f"first{uniq()[:8]}", f"second{uniq()[:8]}"
    assert (
        await client.put("/v1/referrals/vanity-code", json={"code": first}, headers=member.auth)
    ).status_code == 200
    assert (
        await client.put("/v1/referrals/vanity-code", json={"code": second}, headers=member.auth)
    ).status_code == 200
    r = await client.get(f"/r/{first}-{program['short_code']}", headers={"User-Agent": BROWSER_UA})
    assert r.status_code == 302 and f"ref={first}" in r.headers["location"]
    other = await register_member(client)
    assert (
        await client.put("/v1/referrals/vanity-code", json={"code": first}, headers=other.auth)
    ).status_code == 409


async def test_admin_revokes_a_vanity_code(
    client: httpx.AsyncClient, admin: Admin, program: dict, runtime: Runtime
):
    member = await register_member(client)
    code = f"rude{uniq()[:8]}"
    assert (
        await client.put("/v1/referrals/vanity-code", json={"code": code}, headers=member.auth)
    ).status_code == 200
    slug = f"{code}-{program['short_code']}"
    r = await client.get(f"/r/{slug}", headers={"User-Agent": BROWSER_UA})
    assert "rl_click=" in r.headers["location"]  # warm cache says it is the member's

    r = await client.post(
        f"/v1/staff/vanity-codes/{code}/revoke", json={"reason": "offensive"}, headers=member.auth
    )
    assert r.status_code == 403
    r = await client.post(
        f"/v1/staff/vanity-codes/{code.upper()}/revoke", json={"reason": "offensive"}, headers=admin.auth
    )
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    rows = await sql(
        runtime,
        "SELECT actor_id, after FROM audit_log WHERE action = 'referrals.vanity_code_revoked'"
        " AND target_id = :t",
        t=member.id,
    )
    assert str(rows[0]["actor_id"]) == admin.id and rows[0]["after"]["reason"] == "offensive"

    # The link still reaches the program, but credits no one and sets no cookie.
    r = await client.get(f"/r/{slug}", headers={"User-Agent": BROWSER_UA})
    assert r.status_code == 302
    assert "ref=" not in r.headers["location"] and "rl_click" not in r.headers.get("set-cookie", "")
    assert (await client.get("/v1/referrals/vanity-code", headers=member.auth)).status_code == 404
    links = await links_by_program(client, member.auth)
    assert links[program["id"]]["code"] != code
    # Revoked codes stay reserved.
    other = await register_member(client)
    assert (
        await client.put("/v1/referrals/vanity-code", json={"code": code}, headers=other.auth)
    ).status_code == 409
    r = await client.post(
        "/v1/staff/vanity-codes/nosuchcode1/revoke", json={"reason": "x"}, headers=admin.auth
    )
    assert r.status_code == 404


async def test_a_deleted_members_vanity_code_answers_as_unknown(
    client: httpx.AsyncClient, program: dict, runtime: Runtime
):
    member = await register_member(client)
    code = f"gone{uniq()[:8]}"
    assert (
        await client.put("/v1/referrals/vanity-code", json={"code": code}, headers=member.auth)
    ).status_code == 200
    slug = f"{code}-{program['short_code']}"
    r = await client.get(f"/r/{slug}", headers={"User-Agent": BROWSER_UA})
    assert "rl_click=" in r.headers["location"]  # cached as the member's

    # The account is closed; the deletion flow drops the cached codes of the member.
    await sql(runtime, "UPDATE users SET deleted_at = now() WHERE id = :m RETURNING id", m=member.id)
    async with runtime.db.sessionmaker() as session:
        await codes.forget_member_codes(session, runtime, uuid.UUID(member.id))
        assert await codes.resolve_code(session, code) is None

    for _ in range(2):  # from the database, then from the (negative) cache entry
        r = await client.get(f"/r/{slug}", headers={"User-Agent": BROWSER_UA})
        assert r.status_code == 302
        params = parse_qs(urlsplit(r.headers["location"]).query)
        assert "ref" not in params and "rl_click" not in params
        assert "set-cookie" not in r.headers
