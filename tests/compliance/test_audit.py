"""The audit log: every security event writes a row in the same transaction; the database refuses
edits; `verify_chain` and `referloop audit verify` find rows changed or removed behind its back, in
any of the log's chains; audited transactions do not wait for each other.

Tampering happens in a scratch database of its own, so the chain other tests share stays intact."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pyotp
import pytest

from referloop.cli import run_migrations
from referloop.compliance import audit
from referloop.compliance.audit import AUDIT_CHAINS, verify_chain
from referloop.compliance.audit.models import AuditEntry
from referloop.core.context import RequestContext
from referloop.runtime import Runtime
from tests.conftest import make_settings
from tests.factories import (
    DEFAULT_PASSWORD,
    create_staff,
    create_staff_user,
    db_rows,
    latest_code,
    new_email,
    register_member,
)

NEW_PASSWORD = "brass-kettle-91-meadow"


async def actions_for(rt: Runtime, target_id: str) -> list[dict[str, Any]]:
    return await db_rows(
        rt,
        "SELECT action, actor_id, actor_type, before, after, ip, user_agent, request_id FROM audit_log "
        "WHERE target_id = :t ORDER BY created_at, id",
        t=target_id,
    )


class TestSecurityEventsAreRecorded:
    async def test_a_members_security_history(self, client: httpx.AsyncClient, runtime: Runtime) -> None:
        ip = client.headers["x-forwarded-for"]
        headers = {"User-Agent": "AuditTest/1.0", "X-Request-ID": f"req-{uuid.uuid4().hex}"}
        r = await client.post(
            "/v1/auth/register",
            headers=headers,
            json={
                "email": new_email(),
                "password": DEFAULT_PASSWORD,
                "display_name": "Audited",
            },
        )
        assert r.status_code == 201
        tokens = r.json()
        auth = {"Authorization": f"Bearer {tokens['access_token']}"}
        me = (await client.get("/v1/me", headers=auth)).json()
        email = me["email"]

        await client.post(
            "/v1/auth/verify/email/confirm", headers=auth, json={"code": await latest_code(runtime, email)}
        )
        assert (
            await client.post("/v1/auth/login", json={"login": email, "password": "wrong-password!"})
        ).status_code == 401
        assert (
            await client.post("/v1/auth/login", json={"login": email, "password": DEFAULT_PASSWORD})
        ).status_code == 200
        await client.post(
            "/v1/auth/password/change",
            headers=auth,
            json={"current_password": "not-it-at-all", "new_password": NEW_PASSWORD},
        )
        assert (
            await client.post(
                "/v1/auth/password/change",
                headers=auth,
                json={"current_password": DEFAULT_PASSWORD, "new_password": NEW_PASSWORD},
            )
        ).status_code == 204
        await client.post("/v1/auth/password/forgot", json={"email": email})
        assert (
            await client.post(
                "/v1/auth/password/reset",
                json={
                    "email": email,
                    "code": await latest_code(runtime, email),
                    "new_password": DEFAULT_PASSWORD,
                },
            )
        ).status_code == 204

        rows = await actions_for(runtime, me["id"])
        assert [r["action"] for r in rows] == [
            "auth.register",
            "auth.email_verified",
            "auth.login_failed",
            "auth.login",
            "auth.password_change_failed",
            "auth.password_changed",
            "auth.password_reset",
        ]
        register = rows[0]
        assert str(register["actor_id"]) == me["id"]
        assert register["actor_type"] == "member"
        assert register["ip"] == ip
        assert register["user_agent"] == "AuditTest/1.0"
        assert register["request_id"] == headers["X-Request-ID"]
        assert register["after"]["email"] == email
        assert rows[2]["after"] == {"reason": "bad_password"}
        assert rows[3]["after"] == {"mfa": False}
        # No secret ever lands in the log.
        flat = repr(rows)
        assert DEFAULT_PASSWORD not in flat
        assert NEW_PASSWORD not in flat
        assert tokens["refresh_token"] not in flat

    async def test_unknown_account_login_failure(self, client: httpx.AsyncClient, runtime: Runtime) -> None:
        request_id = f"req-{uuid.uuid4().hex}"
        r = await client.post(
            "/v1/auth/login",
            headers={"X-Request-ID": request_id},
            json={"login": new_email(), "password": DEFAULT_PASSWORD},
        )
        assert r.status_code == 401
        rows = await db_rows(
            runtime, "SELECT action, actor_id, after FROM audit_log WHERE request_id = :r", r=request_id
        )
        assert rows == [
            {"action": "auth.login_failed", "actor_id": None, "after": {"reason": "unknown_account"}}
        ]

    async def test_refresh_reuse_totp_and_role_change(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        m = await register_member(client)
        await client.post("/v1/auth/refresh", json={"refresh_token": m.refresh_token})
        await db_rows(
            runtime,
            "UPDATE refresh_tokens SET used_at = used_at - interval '1 minute' "
            "WHERE session_id = :s AND used_at IS NOT NULL",
            s=m.session_id,
        )
        assert (
            await client.post("/v1/auth/refresh", json={"refresh_token": m.refresh_token})
        ).status_code == 401
        reuse = await actions_for(runtime, m.session_id)
        assert [r["action"] for r in reuse] == ["auth.refresh_reuse"]
        assert str(reuse[0]["actor_id"]) == m.id

        admin = await create_staff(client, runtime)
        assert admin.email
        staff_rows = await actions_for(runtime, admin.id)
        assert [r["action"] for r in staff_rows] == ["auth.login", "auth.totp_enabled", "auth.login"]
        assert staff_rows[-1]["after"] == {"mfa": True}
        bad = await client.post(
            "/v1/auth/login",
            json={
                "login": admin.email,
                "password": DEFAULT_PASSWORD,
                "totp_code": pyotp.TOTP(admin.totp_secret).now(),
            },
        )
        assert bad.status_code == 401
        assert (await actions_for(runtime, admin.id))[-1]["after"] == {"reason": "bad_totp"}

        target_id, _ = await create_staff_user(runtime)
        r = await client.put(
            f"/v1/staff/members/{target_id}/role", headers=admin.auth, json={"role": "finance"}
        )
        assert r.status_code == 200
        (change,) = await actions_for(runtime, target_id)
        assert change["action"] == "staff.role_changed"
        assert (change["before"], change["after"]) == ({"role": "admin"}, {"role": "finance"})
        assert str(change["actor_id"]) == admin.id

    async def test_a_refused_request_leaves_no_row(self, client: httpx.AsyncClient, runtime: Runtime) -> None:
        request_id = f"req-{uuid.uuid4().hex}"
        r = await client.post(
            "/v1/auth/register",
            headers={"X-Request-ID": request_id},
            json={
                "email": new_email(),
                "password": "1234567890",
                "display_name": "Weak",
            },
        )
        assert r.status_code == 422
        admin = await create_staff(client, runtime)
        r = await client.put(
            f"/v1/staff/members/{admin.id}/role",
            headers={**admin.auth, "X-Request-ID": request_id},
            json={"role": "member"},
        )
        assert r.status_code == 409
        assert await db_rows(runtime, "SELECT seq FROM audit_log WHERE request_id = :r", r=request_id) == []


class TestDatabaseRefusesChanges:
    @pytest.mark.parametrize(
        "statement",
        [
            "UPDATE audit_log SET action = 'auth.nothing_happened' WHERE id = $1",
            "DELETE FROM audit_log WHERE id = $1",
            "TRUNCATE audit_log",
        ],
    )
    async def test_update_delete_truncate(
        self, client: httpx.AsyncClient, runtime: Runtime, database_url: str, statement: str
    ) -> None:
        await register_member(client)  # there is at least one row
        conn = await asyncpg.connect(database_url)
        try:
            row_id, before = await conn.fetchrow(
                "SELECT id, row_hash FROM audit_log ORDER BY created_at DESC, id DESC LIMIT 1"
            )
            args = (row_id,) if "$1" in statement else ()
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute(statement, *args)
            assert await conn.fetchval("SELECT row_hash FROM audit_log WHERE id = $1", row_id) == before
        finally:
            await conn.close()


@dataclass
class ScratchDb:
    url: str
    rt: Runtime

    async def record(self, n: int, prefix: str = "test.event") -> None:
        for i in range(n):
            async with self.rt.db.sessionmaker() as session, session.begin():
                await audit.record(
                    session,
                    action=f"{prefix}.{i}",
                    actor_id=uuid.uuid4(),
                    target_type="user",
                    target_id=uuid.uuid4(),
                    before={"role": "member", "n": i, "ratio": 0.5, "big": 1e20},
                    after={"role": "support", "at": "2026-01-01T00:00:00+00:00", "ok": True, "items": [1, 2]},
                    ctx=RequestContext(request_id=f"r{i}", ip="192.0.2.1", user_agent="tester"),
                )

    @asynccontextmanager
    async def only_chain(self, chain: int) -> AsyncIterator[None]:
        """Every other chain is busy (another connection holds their locks): writers take `chain`."""
        conn = await asyncpg.connect(self.url)
        try:
            async with conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock($1::bigint + c) FROM generate_series(0, $2::int - 1) c WHERE c <> $3::int",
                    audit.service._CHAIN_LOCK_BASE,
                    AUDIT_CHAINS,
                    chain,
                )
                yield
        finally:
            await conn.close()

    async def verify(self) -> tuple[int, list[audit.service.ChainProblem]]:
        async with self.rt.db.sessionmaker() as session:
            return await verify_chain(session)

    async def superuser(self, sql: str) -> None:
        """What someone with database superuser rights can do: switch the triggers off, then edit."""
        conn = await asyncpg.connect(self.url)
        try:
            async with conn.transaction():
                await conn.execute("SET LOCAL session_replication_role = replica")
                await conn.execute(sql)
        finally:
            await conn.close()

    def cli(self, redis_url: str, var_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "REFERLOOP_DATABASE_URL": self.url,
            "REFERLOOP_REDIS_URL": redis_url,
            "REFERLOOP_VAR_DIR": str(var_dir),
            "REFERLOOP_ENV": "test",
            "REFERLOOP_LOG_LEVEL": "WARNING",
        }
        return subprocess.run(
            [str(Path(sys.executable).parent / "referloop"), *args],
            env=env,
            cwd=var_dir,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture(scope="module")
async def scratch_template(database_url: str) -> AsyncIterator[tuple[str, str]]:
    """An empty database built once by the migrations; each scratch database is a fast copy of it."""
    parts = urlsplit(database_url)
    admin_url = parts._replace(path="/postgres").geturl()
    name = f"referloop_audit_tpl_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        # alembic runs its own event loop: give it a thread of its own.
        await asyncio.to_thread(run_migrations, parts._replace(path=f"/{name}").geturl())
        yield admin_url, name
    finally:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture
async def scratch(
    scratch_template: tuple[str, str], database_url: str, redis_url: str, tmp_path: Path
) -> AsyncIterator[ScratchDb]:
    """A database of its own with the full schema (triggers included), dropped afterwards."""
    admin_url, template = scratch_template
    name = f"referloop_audit_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await conn.close()
    url = urlsplit(database_url)._replace(path=f"/{name}").geturl()
    rt = Runtime.build(make_settings(url, redis_url, tmp_path))
    try:
        yield ScratchDb(url=url, rt=rt)
    finally:
        await rt.close()
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


class TestChainVerification:
    async def test_verify_passes_an_intact_chain_and_finds_a_row_a_superuser_changed(
        self, scratch: ScratchDb, redis_url: str, tmp_path: Path
    ) -> None:
        assert await scratch.verify() == (0, [])
        async with scratch.only_chain(3):
            await scratch.record(5)
        assert await scratch.verify() == (5, [])
        intact = await asyncio.to_thread(scratch.cli, redis_url, tmp_path, "audit", "verify")
        assert intact.returncode == 0, intact.stderr
        assert "intact: 5 rows" in intact.stdout

        await scratch.superuser(
            """UPDATE audit_log SET after = '{"role": "admin"}' WHERE chain = 3 AND seq = 3"""
        )
        count, problems = await scratch.verify()
        assert count == 5
        assert [(p.chain, p.seq, "edited" in p.problem) for p in problems] == [(3, 3, True)]
        broken = await asyncio.to_thread(scratch.cli, redis_url, tmp_path, "audit", "verify")
        assert broken.returncode == 1
        assert "chain 3 seq 3" in broken.stderr
        assert "BROKEN" in broken.stderr

    async def test_concurrent_writers_keep_every_chain_gap_free(self, scratch: ScratchDb) -> None:
        await asyncio.gather(*(scratch.record(3, prefix=f"w{i}") for i in range(8)))
        count, problems = await scratch.verify()
        assert (count, problems) == (24, [])
        rows = await db_rows(scratch.rt, "SELECT chain, seq FROM audit_log ORDER BY chain, seq")
        chains: dict[int, list[int]] = {}
        for r in rows:
            chains.setdefault(r["chain"], []).append(r["seq"])
        assert len(chains) > 1  # 24 rows in one chain of 16 by chance: 16**-23
        assert set(chains) <= set(range(AUDIT_CHAINS))
        for seqs in chains.values():
            assert seqs == list(range(1, len(seqs) + 1))

    async def test_two_open_audited_transactions_do_not_wait_on_each_other(self, scratch: ScratchDb) -> None:
        async with scratch.rt.db.sessionmaker() as first, first.begin():
            await audit.record(first, action="test.first", actor_id=None, actor_type="system")
            # The first transaction is still open, holding its chain; the second must not wait for it.
            async with asyncio.timeout(3):
                async with scratch.rt.db.sessionmaker() as second, second.begin():
                    await audit.record(second, action="test.second", actor_id=None, actor_type="system")
            committed = await db_rows(scratch.rt, "SELECT action FROM audit_log")
            assert committed == [{"action": "test.second"}]
        rows = await db_rows(scratch.rt, "SELECT action, chain, seq FROM audit_log ORDER BY created_at, id")
        assert [r["action"] for r in rows] == ["test.first", "test.second"]
        assert rows[0]["chain"] != rows[1]["chain"]
        assert [r["seq"] for r in rows] == [1, 1]
        assert await scratch.verify() == (2, [])

    async def test_when_every_chain_is_busy_a_writer_waits_and_chains_onto_what_the_holder_wrote(
        self, scratch: ScratchDb, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async with scratch.only_chain(6):
            await scratch.record(2, prefix="before")
        # Chain 6 first in every writer's order, so that the blocked writer waits for chain 6.
        monkeypatch.setattr(
            audit.service, "_chain_order", lambda: sorted(range(AUDIT_CHAINS), key=lambda c: c != 6)
        )
        async with scratch.only_chain(6), scratch.rt.db.sessionmaker() as holder:
            async with holder.begin():
                await audit.record(holder, action="holder", actor_id=None, actor_type="system")

                async def blocked() -> None:
                    async with scratch.rt.db.sessionmaker() as session, session.begin():
                        await audit.record(session, action="waiter", actor_id=None, actor_type="system")

                waiter = asyncio.create_task(blocked())
                await asyncio.sleep(0.3)
                assert not waiter.done()  # every chain is held: it waits
            await asyncio.wait_for(waiter, 5)  # the holder committed; chain 6 is free again
        rows = await db_rows(scratch.rt, "SELECT action, chain, seq FROM audit_log ORDER BY chain, seq")
        assert [(r["action"], r["chain"], r["seq"]) for r in rows] == [
            ("before.0", 6, 1),
            ("before.1", 6, 2),
            ("holder", 6, 3),
            ("waiter", 6, 4),
        ]
        assert await scratch.verify() == (4, [])

    async def test_a_rehashed_row_still_breaks_the_next_link(self, scratch: ScratchDb) -> None:
        """A tamperer who edits a row and recomputes its own hash breaks the link from the row after it."""
        from referloop.compliance.audit import service

        async with scratch.only_chain(5):
            await scratch.record(4)
        async with scratch.rt.db.sessionmaker() as session:
            row = await session.get(AuditEntry, (5, 2))
            assert row is not None
            fields = service._hashed_fields(
                {c.name: getattr(row, c.name) for c in AuditEntry.__table__.columns}
            )
            fields["after"] = {"role": "admin"}
            forged = service._row_digest(bytes(row.prev_hash), fields)
        await scratch.superuser(
            f"""UPDATE audit_log SET after = '{{"role": "admin"}}', row_hash = '\\x{forged.hex()}'
            WHERE chain = 5 AND seq = 2"""
        )
        _, problems = await scratch.verify()
        assert [(p.chain, p.seq, "link" in p.problem) for p in problems] == [(5, 3, True)]

    async def test_a_row_deleted_from_a_chain_other_than_0_is_found(
        self, scratch: ScratchDb, redis_url: str, tmp_path: Path
    ) -> None:
        async with scratch.only_chain(0):
            await scratch.record(2, prefix="zero")
        async with scratch.only_chain(7):
            await scratch.record(5)
        await scratch.superuser("DELETE FROM audit_log WHERE chain = 7 AND seq = 2")
        count, problems = await scratch.verify()
        assert count == 6
        assert problems
        assert (problems[0].chain, problems[0].seq) == (7, 2)
        assert "missing" in problems[0].problem
        broken = await asyncio.to_thread(scratch.cli, redis_url, tmp_path, "audit", "verify")
        assert broken.returncode == 1
        assert "chain 7 seq 2: rows 2..2 are missing" in broken.stderr

    async def test_a_chain_moved_row_is_found(self, scratch: ScratchDb) -> None:
        """A row's chain is covered by its hash: moving it to another chain (at that chain's end, with
        the right link) is still an edit."""
        async with scratch.only_chain(1):
            await scratch.record(1, prefix="one")
        async with scratch.only_chain(2):
            await scratch.record(1, prefix="two")
        await scratch.superuser("UPDATE audit_log SET chain = 9 WHERE chain = 2")
        _, problems = await scratch.verify()
        assert [(p.chain, p.seq, "edited" in p.problem) for p in problems] == [(9, 1, True)]

    async def test_the_shared_chain_of_this_run_is_intact(self, runtime: Runtime) -> None:
        async with runtime.db.sessionmaker() as session:
            count, problems = await verify_chain(session)
        assert problems == []
        assert count >= 0


class TestAnchors:
    """A chain cannot show that its newest rows were cut off; an anchor kept outside the database can."""

    async def anchor(self, scratch: ScratchDb) -> list[audit.ChainHead]:
        async with scratch.rt.db.sessionmaker() as session:
            return await audit.chain_heads(session)

    async def check(self, scratch: ScratchDb, heads: list[audit.ChainHead]) -> list[tuple[int, int, str]]:
        async with scratch.rt.db.sessionmaker() as session:
            return [(p.chain, p.seq, p.problem) for p in await audit.check_anchors(session, heads)]

    async def test_a_chain_cut_back_behind_an_anchor_is_found_though_it_still_verifies(
        self, scratch: ScratchDb
    ) -> None:
        async with scratch.only_chain(4):
            await scratch.record(3)
        async with scratch.only_chain(9):
            await scratch.record(2, prefix="nine")
        heads = await self.anchor(scratch)
        assert [(h.chain, h.seq) for h in heads] == [(4, 3), (9, 2)]
        async with scratch.only_chain(4):
            await scratch.record(2, prefix="later")  # rows written after the anchor are fine
        assert await self.check(scratch, heads) == []

        await scratch.superuser("DELETE FROM audit_log WHERE chain = 4 AND seq >= 3")
        assert await scratch.verify() == (4, [])  # what is left of chain 4 still links up
        [(chain, seq, problem)] = await self.check(scratch, heads)
        assert (chain, seq) == (4, 3) and "cut back" in problem

    async def test_a_tail_rewritten_with_fresh_hashes_is_found(self, scratch: ScratchDb) -> None:
        from referloop.compliance.audit import service

        async with scratch.only_chain(2):
            await scratch.record(3)
        heads = await self.anchor(scratch)
        # Cut the last row, then append a forged one in its place through the normal path: its seq
        # and link are right, so the chain verifies.
        await scratch.superuser("DELETE FROM audit_log WHERE chain = 2 AND seq = 3")
        async with scratch.only_chain(2):
            await scratch.record(1, prefix="forged")
        assert await scratch.verify() == (3, [])
        [(chain, seq, problem)] = await self.check(scratch, heads)
        assert (chain, seq) == (2, 3) and "rewritten" in problem
        assert service.parse_anchors(service.anchor_line(heads, datetime.now(UTC))) == heads

    async def test_the_cli_prints_appends_and_checks_anchors(
        self, scratch: ScratchDb, redis_url: str, tmp_path: Path
    ) -> None:
        async with scratch.only_chain(1):
            await scratch.record(2)
        anchors = tmp_path / "anchors.jsonl"
        first = await asyncio.to_thread(
            scratch.cli, redis_url, tmp_path, "audit", "anchor", "--output", str(anchors)
        )
        assert first.returncode == 0, first.stderr
        async with scratch.only_chain(1):
            await scratch.record(1, prefix="more")
        second = await asyncio.to_thread(
            scratch.cli, redis_url, tmp_path, "audit", "anchor", "--output", str(anchors)
        )
        lines = anchors.read_text().splitlines()
        assert lines == [first.stdout.strip(), second.stdout.strip()]
        assert '"chain":1,"seq":2' in lines[0] and '"chain":1,"seq":3' in lines[1]

        ok = await asyncio.to_thread(
            scratch.cli, redis_url, tmp_path, "audit", "verify", "--anchor", str(anchors)
        )
        assert ok.returncode == 0, ok.stderr
        assert "intact: 3 rows, 2 anchored row(s) in place" in ok.stdout

        await scratch.superuser("DELETE FROM audit_log WHERE chain = 1 AND seq = 3")
        cut = await asyncio.to_thread(
            scratch.cli, redis_url, tmp_path, "audit", "verify", "--anchor", str(anchors)
        )
        assert cut.returncode == 1
        assert "chain 1 seq 3: the anchored row is missing" in cut.stderr

        (tmp_path / "garbage.jsonl").write_text('{"format": "something else"}\n')
        bad = await asyncio.to_thread(
            scratch.cli, redis_url, tmp_path, "audit", "verify", "--anchor", str(tmp_path / "garbage.jsonl")
        )
        assert bad.returncode == 2 and "line 1 is not an audit anchor" in bad.stderr

    async def test_the_worker_logs_an_anchor_that_verify_accepts(self, scratch: ScratchDb) -> None:
        from structlog.testing import capture_logs

        from referloop.compliance.audit.tasks import log_anchor
        from referloop.core.periodic import periodic_jobs
        from referloop.worker import load_task_modules

        load_task_modules()
        assert periodic_jobs["audit.anchor"].run is log_anchor
        async with scratch.only_chain(8):
            await scratch.record(2)
        with capture_logs() as logs:
            await log_anchor(scratch.rt)
        [line] = [e["anchor"] for e in logs if e["event"] == "audit anchor"]
        heads = audit.parse_anchors(line)
        assert [(h.chain, h.seq) for h in heads] == [(8, 2)]
        assert await self.check(scratch, heads) == []
