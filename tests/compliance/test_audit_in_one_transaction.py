"""Several audit rows in one transaction reuse the chain head the transaction holds; a rolled-back
savepoint must not leave the next row chained onto a row that no longer exists."""

import uuid

import pytest
from sqlalchemy import func, select, text

from referloop.compliance import audit
from referloop.compliance.audit import AUDIT_CHAINS, AuditRecord, record_many
from referloop.compliance.audit.models import AuditEntry
from referloop.compliance.audit.service import verify_chain
from referloop.runtime import Runtime

ADVISORY_LOCKS_HELD = text(
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
)


async def test_rows_of_one_transaction_chain_and_survive_a_savepoint_rollback(runtime: Runtime) -> None:
    marker = f"test.batch.{uuid.uuid4().hex[:8]}"
    async with runtime.db.sessionmaker() as session, session.begin():
        await audit.record(session, action=marker, actor_id=None, actor_type="system", after={"n": 1})
        try:
            async with session.begin_nested():
                await audit.record(session, action=marker, actor_id=None, actor_type="system", after={"n": 2})
                raise RuntimeError("item failed")
        except RuntimeError:
            pass
        for n in (3, 4, 5):
            await audit.record(session, action=marker, actor_id=None, actor_type="system", after={"n": n})

    async with runtime.db.sessionmaker() as session:
        kept = (
            await session.scalars(
                select(AuditEntry).where(AuditEntry.action == marker).order_by(AuditEntry.seq)
            )
        ).all()
        assert [row.after for row in kept] == [{"n": 1}, {"n": 3}, {"n": 4}, {"n": 5}]
        # One chain (the savepoint's rollback did not make the transaction take another one), no gap.
        assert len({row.chain for row in kept}) == 1
        seqs = [row.seq for row in kept]
        assert seqs == list(range(seqs[0], seqs[0] + 4))
        assert await session.scalar(select(func.count()).select_from(AuditEntry)) >= 4
        _, problems = await verify_chain(session)
        assert problems == []


async def test_a_new_transaction_of_the_same_session_takes_the_lock_again(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every writer tries the chains in the same order, so all three rows go to one chain (unless
    # something else holds it at that moment).
    monkeypatch.setattr(audit.service, "_chain_order", lambda: list(range(AUDIT_CHAINS)))
    marker = f"test.reuse.{uuid.uuid4().hex[:8]}"
    async with runtime.db.sessionmaker() as session:
        async with session.begin():
            await audit.record(session, action=marker, actor_id=None, actor_type="system")
        # Another writer appends in between; this session must chain onto it, not onto its own row.
        async with runtime.db.sessionmaker() as other, other.begin():
            await audit.record(other, action=marker, actor_id=None, actor_type="system")
        async with session.begin():
            await audit.record(session, action=marker, actor_id=None, actor_type="system")
        _, problems = await verify_chain(session)
        assert problems == []


async def test_a_chain_taken_inside_a_rolled_back_savepoint_is_taken_again(runtime: Runtime) -> None:
    """Rolling back to a savepoint releases an advisory lock taken after it: the next row must lock
    a chain again, not write to one another transaction may now be writing to."""
    marker = f"test.savepoint.{uuid.uuid4().hex[:8]}"
    async with runtime.db.sessionmaker() as session, session.begin():
        try:
            async with session.begin_nested():
                await audit.record(session, action=marker, actor_id=None, actor_type="system", after={"n": 1})
                raise RuntimeError("item failed")
        except RuntimeError:
            pass
        assert await session.scalar(ADVISORY_LOCKS_HELD) == 0  # released with the savepoint
        await record_many(
            session,
            [
                AuditRecord(marker, None, "system", after={"n": 2}),
                AuditRecord(marker, None, "system", after={"n": 3}),
            ],
        )
        assert await session.scalar(ADVISORY_LOCKS_HELD) == 1
    async with runtime.db.sessionmaker() as session:
        kept = (
            await session.scalars(
                select(AuditEntry)
                .where(AuditEntry.action == marker)
                .order_by(AuditEntry.created_at, AuditEntry.id)
            )
        ).all()
        assert [row.after for row in kept] == [{"n": 2}, {"n": 3}]
        assert kept[0].chain == kept[1].chain
        assert kept[1].seq == kept[0].seq + 1
        _, problems = await verify_chain(session)
        assert problems == []
