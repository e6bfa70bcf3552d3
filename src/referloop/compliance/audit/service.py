from __future__ import annotations

import hashlib
import json
import random
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, event, insert, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from referloop.compliance.audit.models import AuditEntry
from referloop.core.context import RequestContext
from referloop.core.ids import uuid7

GENESIS_HASH = b"\x00" * 32
# The log is AUDIT_CHAINS independent hash chains, like the ledger's sharded platform accounts: each
# chain has its own advisory lock (held from a transaction's first audit row to its commit) and its
# own gap-free `seq`. A transaction takes the first free chain in a random order and blocks only when
# all are busy, so audited writes no longer wait for each other. Raise it at any time; never lower it
# (the higher chains would stop growing, which `verify` cannot tell from a truncated chain).
AUDIT_CHAINS = 16
# Chain c is locked with key _CHAIN_LOCK_BASE + c (chain 0 keeps the key of the former single chain).
_CHAIN_LOCK_BASE = 0x5245464C4F4F50  # "REFLOOP"
# One round trip: try the chains in the given order, block on the first if none is free, then read
# that chain's last row (the function is VOLATILE, so that read sees what the previous holder of the
# lock committed). Defined in migration 0013_audit_chains.
_PICK_CHAIN = text("SELECT * FROM audit_chain_head(CAST(:chains AS smallint[]), CAST(:base AS bigint))")


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
    fields = {
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
    # Rows written before the log had chains are chain 0 and were hashed without it; every other
    # row's hash covers its chain too.
    if row["chain"]:
        fields["chain"] = row["chain"]
    return fields


_HEAD_KEY = "audit_chain_head"  # (chain, next seq, hash to chain onto) while this transaction holds it
_HINT_KEY = "audit_chain_hint"  # the chain this transaction took, tried first again after a savepoint


def _forget_head(session: Session, previous_transaction: SessionTransaction) -> None:
    # A rollback (of the transaction or of a savepoint) may have undone rows we chained onto, and a
    # lock taken inside a rolled-back savepoint is released: read the head (and lock) again.
    session.info.pop(_HEAD_KEY, None)
    if previous_transaction.parent is None:
        session.info.pop(_HINT_KEY, None)


def _forget_on_commit(session: Session) -> None:
    # The lock ends with the transaction: the next transaction of this session must take one again.
    session.info.pop(_HEAD_KEY, None)
    session.info.pop(_HINT_KEY, None)


assert isinstance(AuditEntry.__table__, Table)
_INSERT_ROWS = insert(AuditEntry.__table__)


def _chain_order() -> list[int]:
    """The order a transaction tries the chains in: random, so that writers spread over them."""
    return random.sample(range(AUDIT_CHAINS), AUDIT_CHAINS)


async def _chain_head(session: AsyncSession) -> tuple[int, int, bytes]:
    """(chain, next seq, hash to chain onto). The first audit row of a transaction locks a chain and
    reads its last row; later rows of the same transaction (a partner batch writes one per item)
    reuse what this transaction last wrote, since the lock is held until it ends."""
    head = session.info.get(_HEAD_KEY)
    if head is not None:
        chain, seq, prev = head
        return int(chain), int(seq), bytes(prev)
    sync_session = session.sync_session
    if not event.contains(sync_session, "after_soft_rollback", _forget_head):
        event.listen(sync_session, "after_soft_rollback", _forget_head)
        event.listen(sync_session, "after_commit", _forget_on_commit)
    order = _chain_order()
    hint = session.info.get(_HINT_KEY)
    if hint is not None:  # after a savepoint rollback: most likely still ours, or free
        order.remove(hint)
        order.insert(0, hint)
    chain, last_seq, last_hash = (
        await session.execute(_PICK_CHAIN, {"chains": order, "base": _CHAIN_LOCK_BASE})
    ).one()
    session.info[_HINT_KEY] = chain
    if last_seq is None:
        return int(chain), 1, GENESIS_HASH
    return int(chain), int(last_seq) + 1, bytes(last_hash)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One row to append with `record_many` (the arguments of `record`)."""

    action: str
    actor_id: uuid.UUID | None
    actor_type: str = "member"
    target_type: str | None = None
    target_id: uuid.UUID | str | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    ctx: RequestContext | None = field(default=None)


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
    await record_many(
        session,
        [AuditRecord(action, actor_id, actor_type, target_type, target_id, before, after, ctx)],
    )


async def record_many(session: AsyncSession, entries: Sequence[AuditRecord]) -> None:
    """Append several audit rows, in order, in one INSERT in the caller's transaction."""
    if not entries:
        return
    chain, seq, prev_hash = await _chain_head(session)
    rows: list[dict[str, Any]] = []
    for entry in entries:
        ctx = entry.ctx or RequestContext()
        row: dict[str, Any] = {
            "chain": chain,
            "seq": seq,
            "id": uuid7(),
            "created_at": datetime.now(UTC),
            "actor_id": entry.actor_id,
            "actor_type": entry.actor_type,
            "action": entry.action,
            "target_type": entry.target_type,
            "target_id": str(entry.target_id) if entry.target_id is not None else None,
            "before": _canonical(entry.before),
            "after": _canonical(entry.after),
            "ip": (ctx.ip or "")[:64] or None,
            "user_agent": (ctx.user_agent or "")[:512] or None,
            "request_id": ctx.request_id,
        }
        row["prev_hash"] = prev_hash
        row["row_hash"] = prev_hash = _row_digest(prev_hash, _hashed_fields(row))
        rows.append(row)
        seq += 1
    # The table's INSERT with the rows as parameters: one compiled statement, cached, whatever the
    # number of rows (a multi-row VALUES is never cached, so it was compiled on every call).
    await session.execute(_INSERT_ROWS, rows)
    session.info[_HEAD_KEY] = (chain, seq, prev_hash)


@dataclass(frozen=True)
class ChainProblem:
    chain: int
    seq: int
    problem: str


async def _rows(session: AsyncSession, batch: int = 5000) -> AsyncIterator[AuditEntry]:
    """Every row, chain by chain, each chain in `seq` order."""
    after = (-1, 0)
    while True:
        rows = (
            await session.scalars(
                select(AuditEntry)
                .where(tuple_(AuditEntry.chain, AuditEntry.seq) > after)
                .order_by(AuditEntry.chain, AuditEntry.seq)
                .limit(batch)
            )
        ).all()
        if not rows:
            return
        for row in rows:
            yield row
        after = (rows[-1].chain, rows[-1].seq)


async def verify_chain(session: AsyncSession) -> tuple[int, list[ChainProblem]]:
    """Recompute every row's hash, each chain in order. Finds changed rows, deleted rows (a gap in a
    chain's `seq` or a broken link) and reordered rows, naming chain and seq. Returns (rows checked,
    problems)."""
    problems: list[ChainProblem] = []
    chain, expected_seq, prev_hash, count = -1, 1, GENESIS_HASH, 0
    async for row in _rows(session):
        count += 1
        if row.chain != chain:
            chain, expected_seq, prev_hash = row.chain, 1, GENESIS_HASH
        if row.seq != expected_seq:
            problems.append(
                ChainProblem(chain, expected_seq, f"rows {expected_seq}..{row.seq - 1} are missing")
            )
        if bytes(row.prev_hash) != prev_hash:
            problems.append(ChainProblem(chain, row.seq, "link to the previous row is broken"))
        fields = _hashed_fields({c.name: getattr(row, c.name) for c in AuditEntry.__table__.columns})
        if _row_digest(bytes(row.prev_hash), fields) != bytes(row.row_hash):
            problems.append(ChainProblem(chain, row.seq, "row content does not match its hash (edited)"))
        prev_hash, expected_seq = bytes(row.row_hash), row.seq + 1
    return count, problems


# --- Anchors -------------------------------------------------------------------------------------
# A chain proves that no row inside it changed, but not that its newest rows are all still there:
# someone who can write to the database can cut a chain back (or cut it and append rows hashed
# anew), and what is left still verifies. An anchor is the head of every chain (chain, seq, hash)
# written down somewhere the database's users cannot reach (a log shipper, object storage with a
# retention lock, a ticket). `verify --anchor` then checks that each anchored row is still there
# with the same hash: every row up to it is covered by the links that lead to it.

ANCHOR_FORMAT = "referloop.audit-anchor.v1"

_HEADS = text(
    "SELECT h.chain, h.seq, h.row_hash FROM generate_series(0, CAST(:chains AS int) - 1) AS c(chain)"
    " CROSS JOIN LATERAL (SELECT a.chain, a.seq, a.row_hash FROM audit_log a WHERE a.chain = c.chain"
    "  ORDER BY a.seq DESC LIMIT 1) AS h"
)

_ANCHORED_ROWS = text(
    "SELECT a.chain, a.seq, a.row_hash FROM audit_log a"
    " JOIN unnest(CAST(:chains AS smallint[]), CAST(:seqs AS bigint[])) AS k(chain, seq)"
    " ON a.chain = k.chain AND a.seq = k.seq"
)


@dataclass(frozen=True)
class ChainHead:
    chain: int
    seq: int
    row_hash: bytes


async def chain_heads(session: AsyncSession) -> list[ChainHead]:
    """The newest committed row of every chain that has one (one index probe per chain)."""
    rows = (await session.execute(_HEADS, {"chains": AUDIT_CHAINS})).all()
    return [ChainHead(int(r.chain), int(r.seq), bytes(r.row_hash)) for r in rows]


def anchor_line(heads: Sequence[ChainHead], at: datetime) -> str:
    """One JSON line: what `referloop audit anchor` prints and appends."""
    return json.dumps(
        {
            "format": ANCHOR_FORMAT,
            "at": at.astimezone(UTC).isoformat(),
            "heads": [{"chain": h.chain, "seq": h.seq, "hash": h.row_hash.hex()} for h in heads],
        },
        separators=(",", ":"),
    )


def parse_anchors(content: str) -> list[ChainHead]:
    """Every head of every anchor line (a file that anchors were appended to); ValueError names
    the first line that is not one."""
    heads: list[ChainHead] = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            if doc.get("format") != ANCHOR_FORMAT:
                raise ValueError(f"format is not {ANCHOR_FORMAT}")
            heads += [
                ChainHead(int(h["chain"]), int(h["seq"]), bytes.fromhex(h["hash"])) for h in doc["heads"]
            ]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"line {number} is not an audit anchor: {exc}") from exc
    return heads


async def check_anchors(session: AsyncSession, heads: Sequence[ChainHead]) -> list[ChainProblem]:
    """Each anchored row must still exist with the hash it had when it was anchored."""
    if not heads:
        return []
    found = {
        (int(r.chain), int(r.seq)): bytes(r.row_hash)
        for r in (
            await session.execute(
                _ANCHORED_ROWS, {"chains": [h.chain for h in heads], "seqs": [h.seq for h in heads]}
            )
        ).all()
    }
    problems = []
    for head in sorted(set(heads), key=lambda h: (h.chain, h.seq)):
        stored = found.get((head.chain, head.seq))
        if stored is None:
            problems.append(
                ChainProblem(head.chain, head.seq, "the anchored row is missing: the chain was cut back")
            )
        elif stored != head.row_hash:
            problems.append(
                ChainProblem(
                    head.chain, head.seq, "the anchored row's hash differs: rewritten since the anchor"
                )
            )
    return problems
