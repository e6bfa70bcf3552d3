"""The database itself refuses what would break the ledger, whatever code (or person) asks."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError

from referloop import ledger
from referloop.ledger import member_account
from referloop.runtime import Runtime
from tests.ledger.conftest import fund, make_member, program_expense


async def _account_id(rt: Runtime, member: object) -> object:
    async with rt.db.sessionmaker() as session:
        return await session.scalar(
            text("SELECT id FROM ledger_accounts WHERE member_id = :m"), {"m": member}
        )


@pytest.mark.parametrize("column", ["available", "held", "pending"])
async def test_direct_update_to_a_negative_balance_is_refused(runtime: Runtime, column: str) -> None:
    member = await make_member(runtime)
    await fund(runtime, member, 50)
    account = await _account_id(runtime, member)
    async with runtime.db.sessionmaker() as session:
        with pytest.raises(IntegrityError, match=f"member_{column}_non_negative"):
            await session.execute(
                text(f"UPDATE ledger_accounts SET {column} = {column} - 51 WHERE id = :id"), {"id": account}
            )
    async with runtime.db.sessionmaker() as session:
        assert (await ledger.balance_of(session, member, "INR")).available == 50


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_entries SET type = 'tampered' WHERE id = :entry",
        "DELETE FROM ledger_entries WHERE id = :entry",
        "UPDATE ledger_postings SET amount = amount * 2 WHERE entry_id = :entry",
        "DELETE FROM ledger_postings WHERE entry_id = :entry",
        "TRUNCATE ledger_postings",
        "DELETE FROM ledger_accounts WHERE member_id = :member",
        "UPDATE ledger_accounts SET currency = 'USD' WHERE member_id = :member",
    ],
)
async def test_entries_and_postings_are_immutable(runtime: Runtime, unique: str, statement: str) -> None:
    member = await make_member(runtime)
    async with runtime.db.sessionmaker() as session, session.begin():
        posted = await ledger.move(
            session,
            entry_type="test.fund",
            source=program_expense(unique),
            destination=member_account(member),
            amount=10,
            currency="INR",
            idempotency_key=f"imm:{unique}",
        )
    async with runtime.db.sessionmaker() as session:
        with pytest.raises(DBAPIError, match="append-only"):
            await session.execute(text(statement), {"entry": posted.id, "member": member})
    async with runtime.db.sessionmaker() as session:
        view = await ledger.get_entry(session, posted.id)
        assert view.type == "test.fund" and sorted(p.amount for p in view.postings) == [-10, 10]
        assert (await ledger.balance_of(session, member, "INR")).available == 10


async def test_final_pending_transfer_cannot_change(runtime: Runtime, unique: str) -> None:
    member = await make_member(runtime)
    async with runtime.db.sessionmaker() as session, session.begin():
        earned = await ledger.earn_pending(
            session,
            member_id=member,
            amount=5,
            currency="INR",
            source=program_expense(unique),
            idempotency_key=f"e:{unique}",
        )
        await ledger.void_pending(session, earned.transfer.id)
    async with runtime.db.sessionmaker() as session:
        with pytest.raises(DBAPIError, match="already voided"):
            await session.execute(
                text(
                    "UPDATE ledger_pending_transfers SET status = 'pending', final_entry_id = NULL WHERE id = :id"
                ),
                {"id": earned.transfer.id},
            )
    async with runtime.db.sessionmaker() as session:
        with pytest.raises(DBAPIError, match="never deleted"):
            await session.execute(
                text("DELETE FROM ledger_pending_transfers WHERE id = :id"), {"id": earned.transfer.id}
            )


async def test_posting_to_a_platform_pending_bucket_is_refused(runtime: Runtime, unique: str) -> None:
    member = await make_member(runtime)
    await fund(runtime, member, 5)
    async with runtime.db.sessionmaker() as session:
        with pytest.raises(IntegrityError, match="platform_one_bucket"):
            await session.execute(
                text("UPDATE ledger_accounts SET pending = 1 WHERE member_id IS NULL AND scope = 'tests'")
            )
