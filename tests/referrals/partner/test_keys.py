"""Partner API keys: shown once and stored hashed, masked in lists, rotated with an overlap, revoked,
rate-limited per key, every call audited; staff-only management."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import httpx

from referloop.runtime import Runtime
from tests.factories import register_member
from tests.referrals.helpers import Admin, create_university, sql
from tests.referrals.partner.helpers import KEYS, create_key, make_partner

ME = "/partner/v1/me"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_key_is_shown_once_stored_hashed_and_listed_masked(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
) -> None:
    university = await create_university(client, admin)
    created = await create_key(client, admin, university["id"], rate_limit="100/minute")
    key = created["key"]
    assert key.startswith("rlp_test_") and len(key) == len("rlp_test_") + 32
    assert created["masked_key"] == key[:13] + "********" + key[-4:]
    assert created["status"] == "active" and created["rate_limit"] == "100/minute"

    rows = await sql(
        runtime, "SELECT token_hash FROM partner_api_keys WHERE id = :i", i=uuid.UUID(created["id"])
    )
    assert bytes(rows[0]["token_hash"]) == hashlib.sha256(key.encode()).digest()
    # The key itself is nowhere: not in the key row, the audit log or the idempotency records.
    for table in ("partner_api_keys", "audit_log", "idempotency_keys"):
        found = await sql(
            runtime, f"SELECT count(*) AS n FROM {table} t WHERE t::text LIKE :k", k=f"%{key[9:]}%"
        )
        assert found[0]["n"] == 0, table

    r = await client.get(KEYS, params={"university_id": university["id"]}, headers=admin.auth)
    assert r.status_code == 200
    (listed,) = r.json()["items"]
    assert listed["id"] == created["id"] and listed["masked_key"] == created["masked_key"]
    assert "key" not in listed
    r = await client.get(f"{KEYS}/{created['id']}", headers=admin.auth)
    assert r.status_code == 200 and "key" not in r.json()
    audit = await sql(
        runtime,
        "SELECT action, actor_type FROM audit_log WHERE target_id = :t ORDER BY created_at, id",
        t=created["id"],
    )
    assert audit == [{"action": "partner.api_key_created", "actor_type": "staff"}]


async def test_a_retried_create_makes_one_key(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
) -> None:
    university = await create_university(client, admin)
    body = {"university_id": university["id"], "name": "CRM", "contact_email": "crm@example.edu"}
    headers = {**admin.auth, "Idempotency-Key": str(uuid.uuid4())}
    first = await client.post(KEYS, json=body, headers=headers)
    assert first.status_code == 201
    again = await client.post(KEYS, json=body, headers=headers)
    assert again.status_code == 409 and again.json()["code"] == "already_created"
    assert again.json()["id"] == first.json()["id"] and "key" not in again.json()
    count = await sql(
        runtime,
        "SELECT count(*) AS n FROM partner_api_keys WHERE university_id = :u",
        u=uuid.UUID(university["id"]),
    )
    assert count[0]["n"] == 1


async def test_calls_authenticate_by_bearer_or_x_api_key_and_are_audited(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
) -> None:
    partner = await make_partner(client, admin)
    r = await client.get(ME, headers=bearer(partner.key))
    assert r.status_code == 200, r.text
    assert r.json()["university_id"] == partner.university_id and r.json()["key_id"] == partner.key_id
    r = await client.get(ME, headers={"X-API-Key": partner.key})
    assert r.status_code == 200

    rows = await sql(
        runtime,
        "SELECT action, actor_type, actor_id, target_id, after FROM audit_log WHERE actor_id = :k ORDER BY created_at, id",
        k=uuid.UUID(partner.key_id),
    )
    assert [r["action"] for r in rows] == ["partner.api_call", "partner.api_call"]
    assert {r["actor_type"] for r in rows} == {"partner"}
    assert rows[0]["target_id"] == partner.university_id
    assert rows[0]["after"]["route"] == ME and rows[0]["after"]["method"] == "GET"

    member = await register_member(client)
    for headers in (
        {},
        bearer("rlp_test_" + "x" * 32),
        bearer("not-a-key"),
        member.auth,
        {"X-API-Key": partner.key[:-1]},
    ):
        r = await client.get(ME, headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["code"] == "invalid_api_key"
        assert r.headers["content-type"].startswith("application/problem+json")


async def test_revoked_key_gets_401(client: httpx.AsyncClient, runtime: Runtime, admin: Admin) -> None:
    partner = await make_partner(client, admin)
    assert (await client.get(ME, headers=bearer(partner.key))).status_code == 200

    r = await client.post(
        f"{KEYS}/{partner.key_id}/revoke", json={"reason": "leaked in a log"}, headers=admin.auth
    )
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    r = await client.get(ME, headers=bearer(partner.key))
    assert r.status_code == 401 and r.json()["code"] == "invalid_api_key"
    r = await client.post(
        "/partner/v1/outcomes",
        json={"items": [{"external_id": "x", "type": "enrolled", "occurred_at": "2026-11-01T00:00:00Z"}]},
        headers=partner.headers(),
    )
    assert r.status_code == 401
    # Gone from the default list, still there with include_inactive; it cannot be rotated.
    r = await client.get(KEYS, params={"university_id": partner.university_id}, headers=admin.auth)
    assert r.json()["items"] == []
    r = await client.get(
        KEYS, params={"university_id": partner.university_id, "include_inactive": "true"}, headers=admin.auth
    )
    assert [k["status"] for k in r.json()["items"]] == ["revoked"]
    r = await client.post(f"{KEYS}/{partner.key_id}/rotate", headers=admin.auth)
    assert r.status_code == 409
    actions = await sql(
        runtime, "SELECT action FROM audit_log WHERE target_id = :t ORDER BY created_at, id", t=partner.key_id
    )
    assert [a["action"] for a in actions] == ["partner.api_key_created", "partner.api_key_revoked"]


async def test_rotated_key_keeps_working_until_the_overlap_ends_then_401(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
) -> None:
    partner = await make_partner(client, admin)
    until = datetime.now(UTC) + timedelta(hours=2)
    r = await client.post(
        f"{KEYS}/{partner.key_id}/rotate", json={"previous_expires_at": until.isoformat()}, headers=admin.auth
    )
    assert r.status_code == 201, r.text
    rotated = r.json()
    new_key = rotated["key"]
    assert new_key != partner.key and rotated["previous"]["status"] == "expiring"
    assert rotated["previous"]["replaced_by_id"] == rotated["id"]
    assert datetime.fromisoformat(rotated["previous"]["expires_at"]) == until

    # The overlap: both keys work.
    assert (await client.get(ME, headers=bearer(partner.key))).status_code == 200
    r = await client.get(ME, headers=bearer(new_key))
    assert r.status_code == 200 and r.json()["university_id"] == partner.university_id
    # The old key cannot be rotated again (rotate its replacement).
    assert (await client.post(f"{KEYS}/{partner.key_id}/rotate", headers=admin.auth)).status_code == 409

    # The overlap ends (moved in SQL rather than waited for): the old key answers 401, the new one works.
    await sql(
        runtime,
        "UPDATE partner_api_keys SET expires_at = now() - interval '1 second' WHERE id = :i",
        i=uuid.UUID(partner.key_id),
    )
    r = await client.get(ME, headers=bearer(partner.key))
    assert r.status_code == 401 and r.json()["code"] == "invalid_api_key"
    assert (await client.get(ME, headers=bearer(new_key))).status_code == 200

    # A rotation with no overlap ends the old key at once.
    r = await client.post(
        f"{KEYS}/{rotated['id']}/rotate",
        json={"previous_expires_at": datetime.now(UTC).isoformat()},
        headers=admin.auth,
    )
    assert r.status_code == 201
    assert (await client.get(ME, headers=bearer(new_key))).status_code == 401
    assert (await client.get(ME, headers=bearer(r.json()["key"]))).status_code == 200


async def test_each_key_has_its_own_rate_limit(client: httpx.AsyncClient, admin: Admin) -> None:
    partner = await make_partner(client, admin, rate_limit="3/minute")
    other = await create_key(client, admin, partner.university_id, rate_limit="3/minute")
    for _ in range(3):
        assert (await client.get(ME, headers=bearer(partner.key))).status_code == 200
    r = await client.get(ME, headers=bearer(partner.key))
    assert r.status_code == 429 and r.json()["code"] == "rate_limited"
    assert int(r.headers["Retry-After"]) >= 1
    # Another key of the same university has its own budget.
    assert (await client.get(ME, headers=bearer(other["key"]))).status_code == 200


async def test_key_management_is_for_admins(client: httpx.AsyncClient, admin: Admin) -> None:
    university = await create_university(client, admin)
    member = await register_member(client)
    body = {"university_id": university["id"], "name": "CRM", "contact_email": "crm@example.edu"}
    r = await client.post(KEYS, json=body, headers=member.auth)
    assert r.status_code == 403
    r = await client.post(KEYS, json={**body, "university_id": str(uuid.uuid4())}, headers=admin.auth)
    assert r.status_code == 404
    r = await client.post(KEYS, json={**body, "rate_limit": "lots"}, headers=admin.auth)
    assert r.status_code == 422
    r = await client.post(f"{KEYS}/{uuid.uuid4()}/revoke", json={"reason": "x"}, headers=admin.auth)
    assert r.status_code == 404
