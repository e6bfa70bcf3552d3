"""`earn_pending_many`: many earnings in a few statements, each exactly once by its idempotency key,
interchangeable with `earn_pending` (a replay through either answers with the first transfer)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from referloop import ledger
from referloop.ledger import AccountCode, PendingStatus
from referloop.runtime import Runtime
from tests.factories import db_value
from tests.ledger.conftest import make_members, program_expense


async def _balance(rt: Runtime, member: uuid.UUID) -> tuple[int, int, int]:
    async with rt.db.sessionmaker() as session:
        b = await ledger.balance_of(session, member, "INR")
    return b.pending, b.available, b.held


def _earnings(members: list[uuid.UUID], unique: str, amount: int = 1_000) -> list[ledger.Earning]:
    return [
        ledger.Earning(
            member_id=m,
            amount=amount + n,
            currency="INR",
            source=program_expense(unique),
            idempotency_key=f"many:{unique}:{m}",
            entry_type="referral.reward",
            reference_type="referral_reward",
            reference_id=str(m),
            metadata={"n": n},
        )
        for n, m in enumerate(members)
    ]


async def test_many_earnings_land_once_and_replay(runtime: Runtime, unique: str) -> None:
    members = await make_members(runtime, 20)
    earnings = _earnings(members, unique)
    async with runtime.db.sessionmaker() as session, session.begin():
        first = await ledger.earn_pending_many(session, earnings[:12])
    assert [r.replayed for r in first] == [False] * 12
    # Again, with more: the first twelve replay (same transfers), the rest are new.
    async with runtime.db.sessionmaker() as session, session.begin():
        second = await ledger.earn_pending_many(session, earnings)
    assert [r.replayed for r in second] == [True] * 12 + [False] * 8
    assert [r.transfer.id for r in second[:12]] == [r.transfer.id for r in first]
    # `earn_pending` with the same terms replays too.
    e = earnings[3]
    async with runtime.db.sessionmaker() as session, session.begin():
        one = await ledger.earn_pending(
            session,
            member_id=e.member_id,
            amount=e.amount,
            currency=e.currency,
            source=e.source,
            idempotency_key=e.idempotency_key,
            entry_type=e.entry_type,
            reference_type=e.reference_type,
            reference_id=e.reference_id,
            metadata=e.metadata,
        )
    assert one.replayed and one.transfer.id == first[3].transfer.id

    for n, m in enumerate(members):
        assert await _balance(runtime, m) == (1_000 + n, 0, 0)
    async with runtime.db.sessionmaker() as session:
        expense = await ledger.platform_balance(
            session, AccountCode.reward_expense, "INR", f"program-{unique}"
        )
        report = await ledger.reconcile(session)
    assert expense == -sum(1_000 + n for n in range(20))
    assert report.ok, report.discrepancies

    # A transfer made in bulk posts like any other.
    async with runtime.db.sessionmaker() as session, session.begin():
        posted = await ledger.post_pending(session, second[19].transfer.id)
    assert posted.transfer.status == PendingStatus.posted
    assert await _balance(runtime, members[19]) == (0, 1_019, 0)


async def test_a_conflicting_key_writes_nothing_of_the_call(runtime: Runtime, unique: str) -> None:
    members = await make_members(runtime, 3)
    earnings = _earnings(members, unique)
    async with runtime.db.sessionmaker() as session, session.begin():
        await ledger.earn_pending_many(session, earnings[:1])
    changed = [
        ledger.Earning(
            member_id=earnings[0].member_id,
            amount=5,
            currency="INR",
            source=earnings[0].source,
            idempotency_key=earnings[0].idempotency_key,
            entry_type=earnings[0].entry_type,
        ),
        *earnings[1:],
    ]
    with pytest.raises(ledger.IdempotencyConflict):
        async with runtime.db.sessionmaker() as session, session.begin():
            await ledger.earn_pending_many(session, changed)
    assert await _balance(runtime, members[1]) == (0, 0, 0)
    assert await _balance(runtime, members[0]) == (1_000, 0, 0)
    with pytest.raises(ledger.InvalidPosting):
        async with runtime.db.sessionmaker() as session, session.begin():
            await ledger.earn_pending_many(session, [earnings[1], earnings[1]])

    # A caller that catches the refusal and commits keeps nothing of the call either: its other
    # earnings' keys stay free, and a retry without the conflicting one pays them.
    async with runtime.db.sessionmaker() as session, session.begin():
        with pytest.raises(ledger.IdempotencyConflict):
            await ledger.earn_pending_many(session, changed)
    keys = [e.idempotency_key for e in earnings[1:]]
    assert (
        await db_value(runtime, "SELECT count(*) FROM ledger_entries WHERE idempotency_key = ANY(:k)", k=keys)
        == 0
    )
    async with runtime.db.sessionmaker() as session, session.begin():
        paid = await ledger.earn_pending_many(session, earnings[1:])
    assert [r.entry.replayed for r in paid] == [False, False]
    assert await _balance(runtime, members[1]) == (earnings[1].amount, 0, 0)
    async with runtime.db.sessionmaker() as session:
        assert (await ledger.reconcile(session)).ok


async def test_concurrent_calls_with_overlapping_keys_pay_each_once(runtime: Runtime, unique: str) -> None:
    members = await make_members(runtime, 30)
    earnings = _earnings(members, unique)

    async def call(part: list[ledger.Earning]) -> None:
        async with runtime.db.sessionmaker() as session, session.begin():
            await ledger.earn_pending_many(session, part)

    await asyncio.gather(
        call(earnings[:20]), call(earnings[10:]), call(earnings[5:25]), call(list(reversed(earnings)))
    )
    for n, m in enumerate(members):
        assert await _balance(runtime, m) == (1_000 + n, 0, 0)
    async with runtime.db.sessionmaker() as session:
        assert (await ledger.reconcile(session)).ok
