"""Withdrawals under concurrency, through the HTTP API in-process (one event loop, many requests at
once) on a connection pool of 110:

- 1,000 requests of 1 unit against an available balance of 100: exactly 100 succeed, the others
  are refused with `insufficient_funds`; available ends at 0 and held + paid = 100;
- 50 requests with one Idempotency-Key: one withdrawal, one ledger entry, 50 identical answers.

The shared PostgreSQL on a developer machine often allows 100 connections in all (`SHOW
max_connections`), which other tests use too. These tests therefore run on a PostgreSQL with room for
them: `TEST_ROOMY_DATABASE_URL` (an admin URL) if set, else the shared server if it has 150 free
connections, else a private cluster started from the same PostgreSQL binaries for this module."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from fastapi import FastAPI
from redis.asyncio import BlockingConnectionPool, Redis

from referloop import ledger
from referloop.app import create_app
from referloop.cli import run_migrations
from referloop.config import WithdrawalPolicy
from referloop.core.db import Database, to_asyncpg_url
from referloop.identity.models import Role
from referloop.runtime import Runtime
from tests.conftest import IN_CI, make_settings
from tests.factories import asgi_client, create_staff, credit_member, db_value, register_member
from tests.payouts.test_withdrawals_support import (
    assert_reconciles,
    balance,
    request_withdrawal,
    run_submissions,
    usable_method,
)

POOL = 110  # >= 100 connections in use at once, and a few for the test's own queries
NEEDED = POOL + 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bindir() -> Path | None:
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout
        candidates = [Path(out.strip())]
    except (OSError, subprocess.CalledProcessError):
        candidates = []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    return next((c for c in candidates if (c / "initdb").exists() and (c / "pg_ctl").exists()), None)


async def _free_connections(admin_url: str) -> int:
    conn = await asyncpg.connect(admin_url)
    try:
        limit = int(await conn.fetchval("SHOW max_connections"))
        used = int(
            await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
        )
        return limit - used
    finally:
        await conn.close()


class PrivateCluster:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl) with room for many connections. Started and
    stopped by this module only; as root it runs as the `postgres` system user, as initdb requires."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="referloop-roomy-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.dir, "postgres", "postgres")

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, cwd=self.dir)

    def start(self) -> str:
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir}"
            " -c max_connections=300 -c shared_buffers=64MB -c fsync=off -c synchronous_commit=off"
            " -c full_page_writes=off"
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-w",
            "-l",
            str(self.dir / "log"),
            "start",
        )
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def roomy_admin_url() -> Iterator[str]:
    explicit = os.environ.get("TEST_ROOMY_DATABASE_URL")
    if explicit:
        yield explicit
        return
    shared = os.environ.get("TEST_DATABASE_URL", "postgresql://root@127.0.0.1:5432/postgres")
    try:
        if asyncio.run(_free_connections(shared)) >= NEEDED:
            yield shared
            return
    except (OSError, asyncpg.PostgresError):
        pass
    bindir = _pg_bindir()
    if bindir is None:
        if IN_CI:
            pytest.fail("no PostgreSQL with room for 150 connections, and no binaries to start one")
        pytest.skip("no PostgreSQL with room for 150 connections (set TEST_ROOMY_DATABASE_URL)")
    cluster = PrivateCluster(bindir)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def roomy_database_url(roomy_admin_url: str) -> Iterator[str]:
    name = f"referloop_test_roomy_{os.getpid()}"

    async def execute(sql: str) -> None:
        conn = await asyncpg.connect(roomy_admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    asyncio.run(execute(f'CREATE DATABASE "{name}"'))
    url = urlsplit(roomy_admin_url)._replace(path=f"/{name}").geturl()
    run_migrations(url)
    yield url
    asyncio.run(execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
async def roomy_app(roomy_database_url: str, redis_url: str, tmp_var: Path) -> AsyncIterator[FastAPI]:
    settings = make_settings(
        roomy_database_url,
        redis_url,
        tmp_var,
        db_pool_size=POOL,
        db_max_overflow=0,
        # Units of 1, all waiting for finance (so that held is what the burst left).
        withdrawal_policy=WithdrawalPolicy(min_amount=1, auto_approve_below=0),
    )
    rt = Runtime.build(settings)
    # 1,000 requests queue for 110 connections behind one member's lock; on a busy 2-core machine
    # the last ones wait longer than SQLAlchemy's default 30 s for a connection. Waiting is what
    # they should do here (the test is about the money, not the queue's patience).
    await rt.db.dispose()
    rt.db = Database(to_asyncpg_url(roomy_database_url), pool_size=POOL, max_overflow=0, pool_timeout=300)
    # redis-py's default pool holds 100 connections and raises MaxConnectionsError beyond them (a
    # 500 for the 101st request checking its session at once). core/redis.py does not configure a
    # blocking pool yet; this app gets one, so that the test measures the database, not that limit.
    # Few connections, opened patiently: a session check takes a moment, and 1,000 connects at once
    # on a busy machine outlast redis-py's connect timeout.
    await rt.redis.aclose()
    rt.redis = Redis(
        connection_pool=BlockingConnectionPool.from_url(
            redis_url, max_connections=32, timeout=300, socket_connect_timeout=60
        )
    )
    yield create_app(rt.settings, runtime=rt)
    await rt.close()


class PoolWatch:
    """Samples how many pool connections are checked out at once."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        pool = self.rt.db.engine.pool
        while True:
            self.peak = max(self.peak, pool.checkedout())  # type: ignore[attr-defined]
            await asyncio.sleep(0.002)

    def __enter__(self) -> PoolWatch:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


@pytest.mark.timeout(600)
async def test_a_thousand_requests_of_one_unit_against_a_balance_of_a_hundred(roomy_app: FastAPI) -> None:
    rt: Runtime = roomy_app.state.runtime
    async with asgi_client(roomy_app) as client:
        member = await register_member(client)
        await credit_member(rt, member.id, 100)
        method_id = await usable_method(client, rt, member)

        started = time.perf_counter()
        with PoolWatch(rt) as watch:
            responses = await asyncio.gather(
                *(request_withdrawal(client, member, method_id, 1) for _ in range(1000))
            )
        elapsed = time.perf_counter() - started

        outcomes = Counter(
            (r.status_code, r.json().get("code") if r.status_code != 201 else r.json()["state"])
            for r in responses
        )
        assert outcomes == {(201, "requested"): 100, (422, "insufficient_funds"): 900}, (outcomes, elapsed)
        assert watch.peak >= 100, watch.peak  # at least 100 connections were in use at once
        assert await balance(rt, member.id) == ledger.MemberBalance("INR", 0, 0, 100)
        succeeded = [r.json()["id"] for r in responses if r.status_code == 201]
        assert len(set(succeeded)) == 100
        assert await db_value(rt, "SELECT count(*) FROM withdrawals WHERE member_id = :m", m=member.id) == 100

        # Pay ten of them out (manual provider): held + paid stays 100.
        finance = await create_staff(client, rt, role=Role.finance)
        for withdrawal_id in succeeded[:10]:
            r = await client.post(f"/v1/staff/withdrawals/{withdrawal_id}/approve", headers=finance.auth)
            assert r.status_code == 200, r.text
            await run_submissions(rt, withdrawal_id)
            r = await client.post(
                f"/v1/staff/withdrawals/{withdrawal_id}/mark-paid",
                json={"reference": f"UTR{uuid.uuid4().hex[:12]}"},
                headers=finance.auth,
            )
            assert r.json()["state"] == "paid", r.text
    paid = await db_value(
        rt,
        "SELECT coalesce(sum(amount), 0) FROM withdrawals WHERE member_id = :m AND state = 'paid'",
        m=member.id,
    )
    final = await balance(rt, member.id)
    assert (final.available, final.held, paid) == (0, 90, 10)
    assert final.held + paid == 100
    await assert_reconciles(rt)


async def test_fifty_requests_with_one_key_make_one_withdrawal(roomy_app: FastAPI) -> None:
    rt: Runtime = roomy_app.state.runtime
    async with asgi_client(roomy_app) as client:
        member = await register_member(client)
        await credit_member(rt, member.id, 1_000)
        method_id = await usable_method(client, rt, member)
        key = str(uuid.uuid4())

        responses = await asyncio.gather(
            *(request_withdrawal(client, member, method_id, 250, key=key) for _ in range(50))
        )

    assert {r.status_code for r in responses} == {201}
    bodies = [r.json() for r in responses]
    assert bodies.count(bodies[0]) == 50  # the same answer (replays come from JSONB: same fields)
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 49
    withdrawal_id = responses[0].json()["id"]
    assert await db_value(rt, "SELECT count(*) FROM withdrawals WHERE member_id = :m", m=member.id) == 1
    assert (
        await db_value(
            rt,
            "SELECT count(*) FROM ledger_entries WHERE reference_type = 'withdrawal' AND reference_id = :w",
            w=withdrawal_id,
        )
        == 1
    )
    assert await balance(rt, member.id) == ledger.MemberBalance("INR", 0, 750, 250)
    await assert_reconciles(rt)
