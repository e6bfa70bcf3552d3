from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from referloop.compliance.audit.models import AuditEntry
from referloop.core.context import RequestContext
from referloop.core.ids import uuid7

GENESIS_HASH = b"\x00" * 32
# One constant advisory lock orders writers of the chain. It is held only from the insert to the
# commit of the writing transaction, so audited writes serialise on it; that is the price of a
# single verifiable chain, and audited actions are rare next to reads.
_CHAIN_LOCK_KEY = 0x5245464C4F4F50  # "REFLOOP"


def _jsonb_numbers(value: Any) -> Any:
    # JSONB stores numbers as `numeric`: 1e20 comes back as the integer 100000000000000000000, which
    # Python prints differently from the float it was. Integral floats are stored as integers, so
    # that the value read back (and hashed by `verify`) is the value hashed now.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _jsonb_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonb_numbers(v) for v in value]
    return value


def _canonical(value: Any) -> Any:
    """What JSONB will give back, so the hash computed now equals the one recomputed later."""
    if value is None:
        return None
    # NaN and Infinity are not JSON (PostgreSQL refuses them): fail here with a clear message.
    return _jsonb_numbers(json.loads(json.dumps(value, default=str, allow_nan=False)))


def _row_digest(prev_hash: bytes, fields: dict[str, Any]) -> bytes:
    body = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(prev_hash + body).digest()


def _hashed_fields(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "seq": row["seq"],
        "id": str(row["id"]),
        "created_at": row["created_at"].astimezone(UTC).isoformat(),
        "actor_id": str(row["actor_id"]) if row["actor_id"] else None,
        "actor_type": row["actor_type"],
        "action": row["action"],
        "target_type": row["target_type"],
        "target_id": row["target_id"],
        "before": row["before"],
        "after": row["after"],
        "ip": row["ip"],
        "user_agent": row["user_agent"],
        "request_id": row["request_id"],
    }


_HEAD_KEY = "audit_chain_head"


def _forget_head(session: Session, previous_transaction: SessionTransaction) -> None:
    # A rollback (of the transaction or of a savepoint) may have undone rows we chained onto.
    session.info.pop(_HEAD_KEY, None)


async def _chain_head(session: AsyncSession) -> tuple[int, bytes]:
    """The next seq and the hash to chain onto. The first audit row of a transaction takes the chain
    lock and reads the last row; later rows of the same transaction (a partner batch writes one per
    item) reuse what this transaction last wrote, since the lock is held until it ends."""
    head = session.info.get(_HEAD_KEY)
    if head is not None:
        seq, prev = head
        return int(seq), bytes(prev)
    sync_session = session.sync_session
    if not event.contains(sync_session, "after_soft_rollback", _forget_head):
        event.listen(sync_session, "after_soft_rollback", _forget_head)
        event.listen(sync_session, "after_commit", _forget_on_commit)
    await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _CHAIN_LOCK_KEY})
    last = (
        await session.execute(
            select(AuditEntry.seq, AuditEntry.row_hash).order_by(AuditEntry.seq.desc()).limit(1)
        )
    ).first()
    return (last[0] + 1, bytes(last[1])) if last else (1, GENESIS_HASH)


def _forget_on_commit(session: Session) -> None:
    # The lock ends with the transaction: the next transaction of this session must take it again.
    session.info.pop(_HEAD_KEY, None)


async def record(
    session: AsyncSession,
    *,
    action: str,
    actor_id: uuid.UUID | None,
    actor_type: str = "member",
    target_type: str | None = None,
    target_id: uuid.UUID | str | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    ctx: RequestContext | None = None,
) -> None:
    """Append one audit row in the caller's transaction (it is kept only if that commits)."""
    ctx = ctx or RequestContext()
    seq, prev_hash = await _chain_head(session)
    row: dict[str, Any] = {
        "seq": seq,
        "id": uuid7(),
        "created_at": datetime.now(UTC),
        "actor_id": actor_id,
        "actor_type": actor_type,
        "action": action,
        "target_type": target_type,
        "target_id": str(target_id) if target_id is not None else None,
        "before": _canonical(before),
        "after": _canonical(after),
        "ip": (ctx.ip or "")[:64] or None,
        "user_agent": (ctx.user_agent or "")[:512] or None,
        "request_id": ctx.request_id,
    }
    row["prev_hash"] = prev_hash
    row["row_hash"] = _row_digest(prev_hash, _hashed_fields(row))
    await session.execute(insert(AuditEntry).values(**row))
    session.info[_HEAD_KEY] = (seq + 1, row["row_hash"])


@dataclass(frozen=True)
class ChainProblem:
    seq: int
    problem: str


async def _rows(session: AsyncSession, batch: int = 5000) -> AsyncIterator[AuditEntry]:
    last_seq = 0
    while True:
        rows = (
            await session.scalars(
                select(AuditEntry).where(AuditEntry.seq > last_seq).order_by(AuditEntry.seq).limit(batch)
            )
        ).all()
        if not rows:
            return
        for row in rows:
            yield row
        last_seq = rows[-1].seq


async def verify_chain(session: AsyncSession) -> tuple[int, list[ChainProblem]]:
    """Recompute every row's hash in order. Finds changed rows, deleted rows (a gap in `seq` or a
    broken link) and reordered rows. Returns (rows checked, problems)."""
    problems: list[ChainProblem] = []
    expected_seq, prev_hash, count = 1, GENESIS_HASH, 0
    async for row in _rows(session):
        count += 1
        if row.seq != expected_seq:
            problems.append(ChainProblem(expected_seq, f"rows {expected_seq}..{row.seq - 1} are missing"))
        if bytes(row.prev_hash) != prev_hash:
            problems.append(ChainProblem(row.seq, "link to the previous row is broken"))
        fields = _hashed_fields({c.name: getattr(row, c.name) for c in AuditEntry.__table__.columns})
        if _row_digest(bytes(row.prev_hash), fields) != bytes(row.row_hash):
            problems.append(ChainProblem(row.seq, "row content does not match its hash (edited)"))
        prev_hash, expected_seq = bytes(row.row_hash), row.seq + 1
    return count, problems
