"""Several audit rows in one transaction reuse the chain head the transaction holds; a rolled-back
savepoint must not leave the next row chained onto a row that no longer exists."""

import uuid

from sqlalchemy import func, select

from referloop.compliance import audit
from referloop.compliance.audit.models import AuditEntry
from referloop.compliance.audit.service import verify_chain
from referloop.runtime import Runtime


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
        seqs = [row.seq for row in kept]
        assert seqs == list(range(seqs[0], seqs[0] + 4))
        assert await session.scalar(select(func.count()).select_from(AuditEntry)) >= 4
        _, problems = await verify_chain(session)
        assert problems == []


async def test_a_new_transaction_of_the_same_session_takes_the_lock_again(runtime: Runtime) -> None:
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
