"""Shared parts of `referloop keys rotate`: what each table reports, and re-encrypting plain
encrypted columns in batches (a transaction per batch, rows locked FOR UPDATE, never skipped).

Each domain rotates its own tables (see `referloop.payouts.methods.cli`); a table whose values are
only ciphertexts uses `reencrypt_columns`."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from referloop.core.security.fields import FieldCipher

BATCH = 500


@dataclass
class RotationResult:
    """What rotating one table did. `remaining` counts values still under another key when the run
    ended; `conflicts` names rows left alone for staff (each one also counts in `remaining`);
    `unverifiable` counts blind indexes whose key cannot be known (no plaintext is stored to check
    them against): they may stop matching once the old key is removed."""

    table: str
    rotated: int = 0
    remaining: int = 0
    conflicts: list[str] = field(default_factory=list)
    unverifiable: int = 0

    @property
    def done(self) -> bool:
        return self.remaining == 0 and not self.conflicts

    def lines(self) -> list[str]:
        out = [f"{self.table}: re-encrypted {self.rotated}, still under another key {self.remaining}"]
        out += [f"{self.table}: left for staff: {c}" for c in self.conflicts]
        if self.unverifiable:
            out.append(
                f"{self.table}: {self.unverifiable} blind index(es) have no stored plaintext to recompute "
                "them from; rows written under an older key match only by their other ids once it is removed"
            )
        return out


def not_primary(cipher: FieldCipher, column: Any) -> ColumnElement[bool]:
    """SQL: `column` holds a value that is not under the primary key."""
    return and_(column.is_not(None), ~column.like(f"v1.{cipher.primary_kid}.%"))


async def reencrypt_columns(
    sessionmaker: async_sessionmaker[AsyncSession],
    cipher: FieldCipher,
    model: Any,
    columns: Mapping[str, str],
    *,
    table: str,
    batch: int = BATCH,
) -> RotationResult:
    """Re-encrypt under the primary key every value of `columns` (attribute name -> encryption
    context) of `model` (with a uuid `id`) that is under another key."""
    result = RotationResult(table)
    stale = or_(false(), *(not_primary(cipher, getattr(model, c)) for c in columns))
    after: uuid.UUID | None = None
    while True:
        async with sessionmaker() as session, session.begin():
            stmt = select(model).where(stale).order_by(model.id).limit(batch).with_for_update()
            if after is not None:
                stmt = stmt.where(model.id > after)
            # FOR UPDATE returns each row as last committed (a concurrent change is not overwritten).
            rows = (await session.scalars(stmt.execution_options(populate_existing=True))).all()
            after = rows[-1].id if rows else after
            for row in rows:
                for column, context in columns.items():
                    stored = getattr(row, column)
                    if stored is not None and not cipher.is_primary(stored):
                        setattr(
                            row,
                            column,
                            cipher.encrypt(cipher.decrypt(stored, context=context), context=context),
                        )
                        result.rotated += 1
        if len(rows) < batch:
            break
    async with sessionmaker() as session:
        for column in columns:
            left = await session.scalar(
                select(func.count()).select_from(model).where(not_primary(cipher, getattr(model, column)))
            )
            result.remaining += left or 0
    return result
