"""Idempotency for creates whose answer holds a secret shown once (API keys, webhook secrets).

The stored answer of an Idempotency-Key must not hold the secret (it would sit in plain text in
`idempotency_keys`), so the record keeps the answer without it, and a retry with the same key and
body answers 409 `already_created` naming what the first try made, instead of a second one. The
same key with another body is refused (422) as everywhere else."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.errors import Conflict
from referloop.core.idempotency import request_fingerprint, run_idempotent

M = TypeVar("M", bound=BaseModel)


class AlreadyCreated(Conflict):
    code = "already_created"
    title = "Already created with this Idempotency-Key"


async def create_once(
    session: AsyncSession,
    request: Request,
    *,
    scope: str,
    key: str | None,
    body: BaseModel | None,
    create: Callable[[], Awaitable[M]],
    public: Callable[[M], BaseModel],
) -> M:
    """Run `create` once per Idempotency-Key (when one is given); `public(result)` is what the
    record keeps (the result without its secret)."""
    if key is None:
        return await create()
    made: list[M] = []

    async def handler() -> tuple[int, BaseModel]:
        result = await create()
        made.append(result)
        return 201, public(result)

    response = await run_idempotent(
        session, scope=scope, key=key, fingerprint=request_fingerprint(request, body), handler=handler
    )
    if made:
        return made[0]
    stored: Any = orjson.loads(bytes(response.body))
    raise AlreadyCreated(
        "The first request with this Idempotency-Key already made it; its secret was shown only then.",
        id=stored.get("id") if isinstance(stored, dict) else None,
    )
