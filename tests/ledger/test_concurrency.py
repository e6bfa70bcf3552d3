"""Many transactions at once against the real database: no overdraft, exactly-once, no deadlock,
and hot platform accounts spread over shards. Each task has its own session and connection."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from referloop import ledger
from referloop.core.db import Database
from referloop.ledger import AccountCode, PendingStatus, member_account, platform_account
from referloop.ledger.models import JournalEntry
from referloop.ledger.service.accounts import PLATFORM_SHARDS
from referloop.runtime import Runtime
from tests.ledger.conftest import WIDE_POOL, fund, make_member, make_members, program_expense

T = TypeVar("T")


async def all_at_once(
    db: Database, n: int, work: Callable[[AsyncSession, int], Awaitable[T]]
) -> list[T | BaseException]:
    """Run `work` n times, each in its own transaction on its own connection, released together."""
    go = asyncio.Event()
    ready = 0

    async def one(i: int) -> T:
        nonlocal ready
        async with db.sessionmaker() as session, session.begin():
            await session.execute(text("SELECT 1"))  # hold a connection before the start line
            ready += 1
            await go.wait()
            return await work(session, i)

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    while ready < min(n, WIDE_POOL):
        await asyncio.sleep(0.01)
        if any(t.done() for t in tasks):
            break
    go.set()
    return list(await asyncio.gather(*tasks, return_exceptions=True))


async def test_fifty_concurrent_holds_never_overdraw(
    runtime: Runtime, wide_db: Database, unique: str
) -> None:
    member = await make_member(runtime)
    await fund(runtime, member, 100)

    async def withdraw(session: AsyncSession, i: int) -> ledger.PendingResult:
        return await ledger.hold(
            session, member_id=member, amount=3, currency="INR", idempotency_key=f"w{i}:{unique}"
        )

    results = await all_at_once(wide_db, 50, withdraw)
    unexpected = [
        r for r in results if isinstance(r, BaseException) and not isinstance(r, ledger.InsufficientFunds)
    ]
    assert not unexpected, unexpected[:3]
    succeeded = [r for r in results if not isinstance(r, BaseException)]
    assert len(succeeded) == 33  # 33 * 3 = 99 <= 100 < 34 * 3
    async with runtime.db.sessionmaker() as session:
        assert await ledger.balance_of(session, member, "INR") == ledger.MemberBalance("INR", 0, 1, 99)


async def test_fifty_concurrent_payments_out_of_one_wallet(
    runtime: Runtime, wide_db: Database, unique: str
) -> None:
    payer = await make_member(runtime)
    payees = await make_members(runtime, 5)
    await fund(runtime, payer, 1000)

    async def pay(session: AsyncSession, i: int) -> ledger.PostedEntry:
        return await ledger.move(
            session,
            entry_type="test.pay",
            source=member_account(payer),
            destination=member_account(payees[i % 5]),
            amount=40,
            currency="INR",
            idempotency_key=f"p{i}:{unique}",
        )

    results = await all_at_once(wide_db, 50, pay)
    assert all(isinstance(r, ledger.PostedEntry | ledger.InsufficientFunds) for r in results), results
    assert sum(isinstance(r, ledger.PostedEntry) for r in results) == 25
    async with runtime.db.sessionmaker() as session:
        assert (await ledger.balance_of(session, payer, "INR")).available == 0
        received = [(await ledger.balance_of(session, p, "INR")).available for p in payees]
    assert sum(received) == 1000


async def test_fifty_concurrent_requests_with_one_idempotency_key(
    runtime: Runtime, wide_db: Database, unique: str
) -> None:
    member = await make_member(runtime)

    async def reward(session: AsyncSession, i: int) -> ledger.PostedEntry:
        return await ledger.move(
            session,
            entry_type="referral.reward",
            source=program_expense(unique),
            destination=member_account(member),
            amount=500,
            currency="INR",
            idempotency_key=f"reward:{unique}",
            reference_type="referral",
            reference_id=unique,
        )

    results = await all_at_once(wide_db, 50, reward)
    assert all(isinstance(r, ledger.PostedEntry) for r in results), [
        r for r in results if isinstance(r, BaseException)
    ][:3]
    entries = {r.id for r in results if isinstance(r, ledger.PostedEntry)}
    assert len(entries) == 1
    assert sum(not r.replayed for r in results if isinstance(r, ledger.PostedEntry)) == 1
    async with runtime.db.sessionmaker() as session:
        assert (await ledger.balance_of(session, member, "INR")).available == 500
        count = await session.scalar(
            select(func.count()).where(JournalEntry.idempotency_key == f"reward:{unique}")
        )
    assert count == 1


async def test_post_and_void_race_resolves_exactly_once(
    runtime: Runtime, wide_db: Database, unique: str
) -> None:
    member = await make_member(runtime)
    async with runtime.db.sessionmaker() as session, session.begin():
        earned = await ledger.earn_pending(
            session,
            member_id=member,
            amount=1000,
            currency="INR",
            source=program_expense(unique),
            idempotency_key=f"e:{unique}",
        )
    transfer = earned.transfer.id

    async def resolve(session: AsyncSession, i: int) -> ledger.PendingResult:
        if i % 3 == 0:
            return await ledger.void_pending(session, transfer)
        return await ledger.post_pending(session, transfer, amount=1000 if i % 3 == 1 else 400)

    results = await all_at_once(wide_db, 50, resolve)
    done = [r for r in results if isinstance(r, ledger.PendingResult)]
    refused = [r for r in results if isinstance(r, ledger.PendingTransferFinal)]
    assert len(done) + len(refused) == 50, [r for r in results if isinstance(r, BaseException)][:3]
    assert sum(not r.replayed for r in done) == 1  # one winner; the rest repeated it or were refused
    assert len({r.entry.id for r in done}) == 1
    async with runtime.db.sessionmaker() as session:
        final = await ledger.get_pending(session, transfer)
        balance = await ledger.balance_of(session, member, "INR")
        expense = await ledger.platform_balance(
            session, AccountCode.reward_expense, "INR", f"program-{unique}"
        )
    expected = {PendingStatus.voided: 0, PendingStatus.posted: final.posted_amount}[
        PendingStatus(final.status)
    ]
    assert balance == ledger.MemberBalance("INR", 0, expected or 0, 0)
    assert expense == -(expected or 0)


async def test_opposite_payments_do_not_deadlock(runtime: Runtime, wide_db: Database, unique: str) -> None:
    a, b = await make_members(runtime, 2)
    await fund(runtime, a, 1000)
    await fund(runtime, b, 1000)

    async def pay(session: AsyncSession, i: int) -> ledger.PostedEntry:
        src, dst = (a, b) if i % 2 else (b, a)
        return await ledger.move(
            session,
            entry_type="test.pay",
            source=member_account(src),
            destination=member_account(dst),
            amount=7,
            currency="INR",
            idempotency_key=f"x{i}:{unique}",
        )

    results = await all_at_once(wide_db, 50, pay)
    assert all(isinstance(r, ledger.PostedEntry) for r in results), [
        r for r in results if isinstance(r, BaseException)
    ][:3]
    async with runtime.db.sessionmaker() as session:
        assert (await ledger.balance_of(session, a, "INR")).available == 1000
        assert (await ledger.balance_of(session, b, "INR")).available == 1000


async def test_hot_platform_account_is_spread_over_shards(
    runtime: Runtime, wide_db: Database, unique: str
) -> None:
    members = await make_members(runtime, 50)
    expense = platform_account(AccountCode.reward_expense, f"hot-{unique}")

    async def reward(session: AsyncSession, i: int) -> ledger.PostedEntry:
        return await ledger.move(
            session,
            entry_type="referral.reward",
            source=expense,
            destination=member_account(members[i]),
            amount=100 + i,
            currency="INR",
            idempotency_key=f"hot{i}:{unique}",
        )

    results = await all_at_once(wide_db, 50, reward)
    assert all(isinstance(r, ledger.PostedEntry) for r in results), [
        r for r in results if isinstance(r, BaseException)
    ][:3]
    async with runtime.db.sessionmaker() as session:
        shards = (
            await session.execute(
                text(
                    "SELECT shard, available FROM ledger_accounts WHERE code = 'reward_expense' AND scope = :s"
                ),
                {"s": f"hot-{unique}"},
            )
        ).all()
        total = await ledger.platform_balance(session, AccountCode.reward_expense, "INR", f"hot-{unique}")
    # 50 entries over the shards: many rows share the load, each holds part of the balance.
    assert 4 <= len(shards) <= PLATFORM_SHARDS
    assert all(s.available < 0 for s in shards)
    assert total == sum(s.available for s in shards) == -sum(100 + i for i in range(50))


async def test_member_accounts_are_not_sharded(runtime: Runtime, unique: str) -> None:
    member = await make_member(runtime)
    for _ in range(5):
        await fund(runtime, member, 1)
    async with runtime.db.sessionmaker() as session:
        rows = await session.scalar(
            text("SELECT count(*) FROM ledger_accounts WHERE member_id = :m"), {"m": member}
        )
    assert rows == 1
