"""Idempotency-Key for POSTs that create or move something (Stripe's semantics).

The key row is inserted in the request's own transaction. A concurrent request with the same key
blocks on the unique index until the first transaction ends: if it committed, the second replays
the stored answer; if it rolled back (an error, nothing happened), the second runs for real. So the
effect and the stored answer are committed together, and a replay can never see a half-done request.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import Index, LargeBinary, SmallInteger, String, func, literal, select, update
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from referloop.core.db import Base, utcnow
from referloop.core.errors import AppError, InvalidInput

KEY_MAX_LENGTH = 255
REPLAY_HEADER = "Idempotent-Replayed"


class IdempotencyKeyReused(AppError):
    status_code = 422
    code = "idempotency_key_reused"
    title = "Idempotency key reused with a different request"


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_keys"

    scope: Mapped[str] = mapped_column(String(100), primary_key=True)  # e.g. "withdrawals:<member id>"
    key: Mapped[str] = mapped_column(String(KEY_MAX_LENGTH), primary_key=True)
    request_hash: Mapped[bytes]
    response_status: Mapped[int | None] = mapped_column(SmallInteger)
    response_body: Mapped[Any | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)

    __table_args__ = (Index("ix_idempotency_keys_created_at", "created_at"),)


async def idempotency_key_header(
    idempotency_key: Annotated[
        str,
        Header(
            min_length=1,
            max_length=KEY_MAX_LENGTH,
            description="A unique key per operation (a UUID is best). Retrying with the same key and "
            "body replays the first answer; the same key with another body is refused (422).",
        ),
    ],
) -> str:
    return idempotency_key


def request_fingerprint(request: Request, body: BaseModel | None) -> bytes:
    payload = body.model_dump(mode="json") if body is not None else None
    parts = [request.method, request.url.path, payload]
    try:
        encoded = orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, which orjson refuses
        encoded = json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).digest()


async def run_idempotent(
    session: AsyncSession,
    *,
    scope: str,
    key: str,
    fingerprint: bytes,
    handler: Callable[[], Awaitable[tuple[int, BaseModel]]],
    lock: str | None = None,
    kept_for_replay: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> JSONResponse:
    """Run `handler` once per (scope, key); a replay answers what the first run answered.

    `lock`: an advisory lock (by name) to take first, in the same statement as the key's INSERT, and
    hold until the transaction ends; for handlers that must not run twice at once for one member
    (the handler's later statements see everything the previous holder committed).
    `kept_for_replay`: what of the answer is stored for replays, when part of it must be seen once
    only (a single-use link): the first answer is sent whole, replays get the kept part."""
    if not key.isprintable():
        raise InvalidInput("Idempotency-Key must be printable text.")
    if lock is None:
        claim = insert(IdempotencyRecord).values(scope=scope, key=key, request_hash=fingerprint)
    else:
        locked = select(func.pg_advisory_xact_lock(func.hashtextextended(lock, 0)).label("locked")).subquery()
        # created_at is added by from_select (its Python-side default), as in the plain INSERT.
        claim = insert(IdempotencyRecord).from_select(
            ["scope", "key", "request_hash"],
            select(
                literal(scope, String), literal(key, String), literal(fingerprint, LargeBinary)
            ).select_from(locked),
        )
    inserted = await session.scalar(claim.on_conflict_do_nothing().returning(IdempotencyRecord.key))
    if inserted is None:
        stored = await session.scalar(
            select(IdempotencyRecord).where(IdempotencyRecord.scope == scope, IdempotencyRecord.key == key)
        )
        if stored is None or stored.response_status is None:  # pragma: no cover - defensive
            raise InvalidInput("This Idempotency-Key is being used by a request in progress; retry shortly.")
        if bytes(stored.request_hash) != fingerprint:
            raise IdempotencyKeyReused("This Idempotency-Key was used for a different request.")
        return JSONResponse(
            stored.response_body, status_code=stored.response_status, headers={REPLAY_HEADER: "true"}
        )
    status, model = await handler()
    body = model.model_dump(mode="json")
    await session.execute(
        update(IdempotencyRecord)
        .where(IdempotencyRecord.scope == scope, IdempotencyRecord.key == key)
        .values(response_status=status, response_body=kept_for_replay(body) if kept_for_replay else body)
    )
    return JSONResponse(body, status_code=status)


def member_scope(name: str, member_id: uuid.UUID) -> str:
    return f"{name}:{member_id}"


async def run_idempotent_for(
    session: AsyncSession,
    request: Request,
    user_id: uuid.UUID,
    name: str,
    key: str,
    body: BaseModel,
    handler: Callable[[], Awaitable[tuple[int, BaseModel]]],
    *,
    lock: str | None = None,
) -> JSONResponse:
    """`run_idempotent` for one user's POST: keys are scoped to `name` and the user, and the
    fingerprint is the request's method, path and body (a retry with the same key and body answers
    the first result; another body with the same key is refused)."""
    return await run_idempotent(
        session,
        scope=member_scope(name, user_id),
        key=key,
        fingerprint=request_fingerprint(request, body),
        handler=handler,
        lock=lock,
    )
