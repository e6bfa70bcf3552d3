"""Staff changes to one account at once: each sees the one before it, and an admin always remains."""

from __future__ import annotations

import asyncio
import itertools
import uuid

import httpx
import pytest
from sqlalchemy import text

from referloop.core.context import RequestContext
from referloop.identity.models import Role
from referloop.identity.service import staff
from referloop.identity.service.sessions import Principal
from referloop.runtime import Runtime
from tests.factories import create_staff, db_rows, db_value, register_member


async def _warm_pool(client: httpx.AsyncClient, member_auth: dict[str, str], n: int) -> None:
    """Open `n` write connections, so that the concurrent requests below reach the database together."""
    await asyncio.gather(*(client.patch("/v1/me", json={}, headers=member_auth) for _ in range(n)))


async def test_two_admins_demoting_each_other_at_once_leave_one_admin(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    a = await create_staff(client, runtime)
    b = await create_staff(client, runtime)
    await _warm_pool(client, a.auth, 4)
    results = await asyncio.gather(
        client.put(f"/v1/staff/members/{b.id}/role", json={"role": "support"}, headers=a.auth),
        client.put(f"/v1/staff/members/{a.id}/role", json={"role": "support"}, headers=b.auth),
    )
    statuses = sorted(r.status_code for r in results)
    assert statuses[0] == 200 and statuses[1] in (403, 409), [r.text for r in results]
    refused = next(r for r in results if r.status_code != 200)
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] in ("insufficient_role", "last_admin")
    roles = await db_rows(
        runtime, "SELECT role FROM users WHERE id IN (:a, :b) ORDER BY role", a=a.id, b=b.id
    )
    assert [r["role"] for r in roles] == ["admin", "support"]
    changes = await db_value(
        runtime,
        "SELECT count(*) FROM audit_log WHERE action = 'staff.role_changed' AND target_id IN (:a, :b)",
        a=a.id,
        b=b.id,
    )
    assert changes == 1


async def test_the_last_admin_cannot_be_demoted(client: httpx.AsyncClient, runtime: Runtime) -> None:
    """The other admin of the race above, with no admin left anywhere else: refused with 409."""
    a = await create_staff(client, runtime)
    b = await create_staff(client, runtime)
    actor = Principal(user_id=uuid.UUID(a.id), session_id=uuid.UUID(a.session_id), role="admin", mfa=True)
    async with runtime.db.sessionmaker() as session:
        # In a transaction that is rolled back: every admin but `b` demoted, `a` among them (as if
        # another admin had just demoted `a`, after `a`'s request had passed its role check).
        await session.execute(
            text("UPDATE users SET role = 'support' WHERE role = 'admin' AND id <> :b"), {"b": b.id}
        )
        with pytest.raises(staff.LastAdmin) as refused:
            await staff.change_role(session, actor, uuid.UUID(b.id), Role.member, RequestContext())
        assert refused.value.status_code == 409
        assert refused.value.code == "last_admin"
        await session.rollback()
    assert await db_value(runtime, "SELECT role FROM users WHERE id = :b", b=b.id) == "admin"
    assert (
        await db_value(
            runtime,
            "SELECT count(*) FROM audit_log WHERE action = 'staff.role_changed' AND target_id = :b",
            b=b.id,
        )
        == 0
    )


async def test_concurrent_kyc_changes_are_audited_as_a_chain(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    finance = await create_staff(client, runtime, role=Role.finance)
    member = await register_member(client)
    statuses = ["pending", "verified", "rejected", "pending", "verified", "rejected"]
    await _warm_pool(client, member.auth, len(statuses))
    results = await asyncio.gather(
        *(
            client.put(
                f"/v1/staff/members/{member.id}/kyc-status", json={"kyc_status": s}, headers=finance.auth
            )
            for s in statuses
        )
    )
    assert [r.status_code for r in results] == [200] * len(statuses)
    rows = await db_rows(
        runtime,
        "SELECT before, after FROM audit_log WHERE action = 'staff.kyc_status_changed' AND target_id = :m"
        " ORDER BY created_at, id",
        m=member.id,
    )
    assert len(rows) == len(statuses)
    assert rows[0]["before"] == {"kyc_status": "none"}
    for previous, row in itertools.pairwise(rows):
        assert row["before"] == previous["after"]
    final = await db_value(runtime, "SELECT kyc_status FROM users WHERE id = :m", m=member.id)
    assert rows[-1]["after"] == {"kyc_status": final}
