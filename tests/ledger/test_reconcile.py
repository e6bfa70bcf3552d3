"""Reconciliation: `referloop ledger reconcile` proves balances equal the postings, and names any drift."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from sqlalchemy import text

from referloop import ledger
from referloop.config import Settings
from referloop.runtime import Runtime
from tests.ledger.conftest import fund, make_member, program_expense


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "REFERLOOP_DATABASE_URL": settings.database_url,
        "REFERLOOP_REDIS_URL": settings.redis_url,
        "REFERLOOP_VAR_DIR": str(settings.var_dir),
        "REFERLOOP_ENV": "test",
        "REFERLOOP_LOG_LEVEL": "WARNING",
    }
    return subprocess.run(
        [sys.executable, "-m", "referloop", "ledger", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )


async def _member_account(rt: Runtime, member: uuid.UUID) -> uuid.UUID:
    async with rt.db.sessionmaker() as session:
        account: uuid.UUID = await session.scalar(
            text("SELECT id FROM ledger_accounts WHERE member_id = :m"), {"m": member}
        )
    return account


async def test_reconcile_command_finds_nothing_in_a_sound_ledger(runtime: Runtime, unique: str) -> None:
    member = await make_member(runtime)
    await fund(runtime, member, 1234)
    async with runtime.db.sessionmaker() as session, session.begin():
        held = await ledger.hold(
            session, member_id=member, amount=234, currency="INR", idempotency_key=f"h:{unique}"
        )
        await ledger.earn_pending(
            session,
            member_id=member,
            amount=10,
            currency="INR",
            source=program_expense(unique),
            idempotency_key=f"e:{unique}",
        )
    async with runtime.db.sessionmaker() as session, session.begin():
        await ledger.release(session, held.transfer.id)
    result = _cli(runtime.settings, "reconcile")
    assert result.returncode == 0, result.stderr
    assert "ledger reconciles" in result.stdout and "no difference" in result.stdout

    balances = _cli(runtime.settings, "balances", str(member))
    assert balances.returncode == 0, balances.stderr
    assert "INR  available 12.34 INR  pending 0.10 INR  held 0.00 INR" in balances.stdout


async def test_reconcile_command_reports_a_drifted_balance_and_exits_1(runtime: Runtime) -> None:
    member = await make_member(runtime)
    await fund(runtime, member, 500)
    account = await _member_account(runtime, member)
    # Someone edits a stored balance behind the ledger's back (non-negative, so the CHECK allows it).
    async with runtime.db.sessionmaker() as session, session.begin():
        await session.execute(
            text("UPDATE ledger_accounts SET available = available + 1 WHERE id = :id"), {"id": account}
        )
    try:
        result = _cli(runtime.settings, "reconcile")
    finally:
        async with runtime.db.sessionmaker() as session, session.begin():
            await session.execute(
                text("UPDATE ledger_accounts SET available = available - 1 WHERE id = :id"), {"id": account}
            )
    assert result.returncode == 1
    assert (
        f"balance: member:{member} INR: stored pending/available/held 0/501/0, postings say 0/500/0"
        in result.stderr
    )
    assert "currency_total: INR: all balances sum to 1, not 0" in result.stderr
    assert "does NOT reconcile" in result.stderr


async def test_reconcile_checks_open_transfers_against_pending_and_held(
    runtime: Runtime, unique: str
) -> None:
    member = await make_member(runtime)
    await fund(runtime, member, 100)
    async with runtime.db.sessionmaker() as session, session.begin():
        await ledger.hold(session, member_id=member, amount=40, currency="INR", idempotency_key=f"h:{unique}")
    account = await _member_account(runtime, member)
    async with runtime.db.sessionmaker() as session:
        assert (await ledger.reconcile(session)).ok
        # Inside a transaction that is rolled back: move 1 from held to available without an entry.
        await session.execute(
            text("UPDATE ledger_accounts SET held = held - 1, available = available + 1 WHERE id = :id"),
            {"id": account},
        )
        report = await ledger.reconcile(session)
        await session.rollback()
    checks = sorted(d.check for d in report.discrepancies)
    assert checks == ["balance", "pending_transfers"], [str(d) for d in report.discrepancies]
    async with runtime.db.sessionmaker() as session:
        assert (await ledger.reconcile(session)).ok
