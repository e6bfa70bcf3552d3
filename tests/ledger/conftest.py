"""Ledger test helpers: members made directly in the database (the ledger needs only their ids),
and a wide connection pool for the concurrency tests."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator

import pytest

from referloop.core.db import Database, to_asyncpg_url
from referloop.core.ids import uuid7
from referloop.identity.models import User
from referloop.ledger import AccountCode, AccountRef, platform_account
from referloop.runtime import Runtime

# 50 transactions at once, each on its own connection.
WIDE_POOL = 50


async def make_members(rt: Runtime, n: int = 1) -> list[uuid.UUID]:
    """Members inserted directly: the ledger only needs a user row to point at."""
    ids = [uuid7() for _ in range(n)]
    async with rt.db.sessionmaker() as session, session.begin():
        session.add_all(
            User(
                id=i,
                email=f"l{i.hex}@example.com",
                password_hash="!",
                display_name="Ledger Test",
                referral_code=secrets.token_hex(4).upper(),
            )
            for i in ids
        )
    return ids


async def make_member(rt: Runtime) -> uuid.UUID:
    return (await make_members(rt, 1))[0]


def program_expense(unique: str) -> AccountRef:
    """A reward expense account of a program of this test's own, so its balance is the test's alone."""
    return platform_account(AccountCode.reward_expense, f"program-{unique}")


async def fund(
    rt: Runtime, member_id: uuid.UUID, amount: int, currency: str = "INR", *, scope: str = ""
) -> None:
    """Give a member `amount` available, funded by a reward expense account."""
    from referloop import ledger

    async with rt.db.sessionmaker() as session, session.begin():
        await ledger.move(
            session,
            entry_type="test.fund",
            source=platform_account(AccountCode.reward_expense, scope or "tests"),
            destination=ledger.member_account(member_id),
            amount=amount,
            currency=currency,
            idempotency_key=f"test-fund:{uuid.uuid4()}",
        )


@pytest.fixture
async def wide_db(runtime: Runtime) -> AsyncIterator[Database]:
    """A pool of its own, closed after the test: 50 connections are not kept from other tests."""
    db = Database(to_asyncpg_url(runtime.settings.database_url), pool_size=WIDE_POOL, max_overflow=0)
    yield db
    await db.dispose()
