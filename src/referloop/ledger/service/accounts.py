"""Account references, derived ids, hot-account shards, and creating accounts on first use."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.ledger.errors import InvalidPosting
from referloop.ledger.models import AccountCode

# Fixed namespace for account ids: uuid5(namespace, key). Never change it (ids are stored).
_ACCOUNT_NAMESPACE = uuid.UUID("6c1e4c62-5b0c-4d5e-9a55-6c6f6f702d4c")

# Platform accounts that (nearly) every entry touches are split into this many rows; an entry picks
# one at random, so concurrent entries rarely wait on the same row lock, and the account's balance
# is the sum of its shards. Raising it later is safe (old shards keep counting); never lower it.
PLATFORM_SHARDS = 32
HOT_CODES = frozenset(
    {
        AccountCode.reward_expense,
        AccountCode.payout_clearing,
        AccountCode.settlement,
        AccountCode.fees,
        AccountCode.game_prizes,
    }
)

_MAX_SCOPE = 64


@dataclass(frozen=True, slots=True)
class AccountRef:
    """A logical account: a member's wallet, or a platform account (optionally scoped, e.g. per
    program). The currency is given per posting; the shard is chosen per entry."""

    code: AccountCode
    member_id: uuid.UUID | None = None
    scope: str = ""

    @property
    def is_member(self) -> bool:
        return self.code is AccountCode.member

    @property
    def key(self) -> str:
        return f"member:{self.member_id}" if self.is_member else f"{self.code.value}:{self.scope}"

    @property
    def sharded(self) -> bool:
        return self.code in HOT_CODES


def member_account(member_id: uuid.UUID) -> AccountRef:
    return AccountRef(AccountCode.member, member_id=member_id)


def platform_account(code: AccountCode | str, scope: str = "") -> AccountRef:
    code = AccountCode(code)
    if code is AccountCode.member:
        raise InvalidPosting("Use member_account() for a member's wallet.")
    if len(scope) > _MAX_SCOPE or not scope.isprintable():
        raise InvalidPosting(f"An account scope is at most {_MAX_SCOPE} printable characters.")
    return AccountRef(code, scope=scope)


def account_id(ref: AccountRef, currency: str, shard: int = 0) -> uuid.UUID:
    return uuid.uuid5(_ACCOUNT_NAMESPACE, f"{ref.key}|{currency}|{shard}")


def pick_shard(ref: AccountRef) -> int:
    return random.randrange(PLATFORM_SHARDS) if ref.sharded else 0


@dataclass(frozen=True, slots=True)
class AccountRow:
    """Everything needed to create an account row the first time an entry touches it."""

    id: uuid.UUID
    ref: AccountRef
    currency: str
    shard: int


_CREATE = text(
    "INSERT INTO ledger_accounts (id, code, member_id, scope, currency, shard)"
    " SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:codes AS text[]), CAST(:members AS uuid[]),"
    "  CAST(:scopes AS text[]), CAST(:currencies AS text[]), CAST(:shards AS smallint[]))"
    " ORDER BY 1 ON CONFLICT DO NOTHING"
)


async def create_accounts(session: AsyncSession, rows: Iterable[AccountRow]) -> None:
    """Create the accounts an entry touches (those that exist already are left alone)."""
    ordered = sorted(rows, key=lambda r: r.id)
    await session.execute(
        _CREATE,
        {
            "ids": [r.id for r in ordered],
            "codes": [r.ref.code.value for r in ordered],
            "members": [r.ref.member_id for r in ordered],
            "scopes": [r.ref.scope for r in ordered],
            "currencies": [r.currency for r in ordered],
            "shards": [r.shard for r in ordered],
        },
    )
