"""Staff (admin) routes for partner API keys: create, list (masked), rotate with an overlap, revoke.
Every write is audited; a key is shown once, in the answer that made it."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, status

from referloop.core.db import utcnow
from referloop.core.deps import ContextDep, ReadSession, RuntimeDep, WriteSession
from referloop.core.errors import problem_responses
from referloop.core.idempotency import KEY_MAX_LENGTH
from referloop.core.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page
from referloop.identity.deps import AdminStaff
from referloop.identity.service.sessions import Principal
from referloop.referrals.partner.models import PartnerApiKey
from referloop.referrals.partner.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    ApiKeyRevoke,
    ApiKeyRotate,
    ApiKeyRotated,
)
from referloop.referrals.partner.secret_once import create_once
from referloop.referrals.partner.service import keys
from referloop.runtime import Runtime

router = APIRouter(
    prefix="/v1/staff/partner-keys", tags=["staff: partner API"], responses=problem_responses(401, 403)
)

Cursor = Annotated[str | None, Query(max_length=300, pattern=r"^[A-Za-z0-9_-]+$")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
OptionalIdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=KEY_MAX_LENGTH,
        description="Optional. A retry with the same key and body answers 409 `already_created` with the "
        "id of the key the first try made (its secret is shown only once).",
    ),
]


def key_out(key: PartnerApiKey, rt: Runtime) -> ApiKeyOut:
    return ApiKeyOut(
        id=key.id,
        university_id=key.university_id,
        name=key.name,
        masked_key=keys.masked(key),
        contact_email=key.contact_email,
        rate_limit=keys.effective_rate_limit(key, rt.settings),
        status=keys.key_status(key, utcnow()),
        expires_at=key.expires_at,
        replaced_by_id=key.replaced_by_id,
        revoked_at=key.revoked_at,
        revoked_reason=key.revoked_reason,
        last_used_at=key.last_used_at,
        created_at=key.created_at,
    )


def _scope(actor: Principal, name: str) -> str:
    return f"{name}:{actor.user_id}"


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyCreated,
    responses=problem_responses(404, 409, 422),
)
async def create_key(
    body: ApiKeyCreate,
    request: Request,
    actor: AdminStaff,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
    idempotency_key: OptionalIdempotencyKey = None,
) -> ApiKeyCreated:
    """A key for one university's programs. The answer's `key` is shown only now."""

    async def create() -> ApiKeyCreated:
        key, token = await keys.create_key(session, rt, actor, body, ctx)
        return ApiKeyCreated(**key_out(key, rt).model_dump(), key=token)

    return await create_once(
        session,
        request,
        scope=_scope(actor, "partner.keys"),
        key=idempotency_key,
        body=body,
        create=create,
        public=lambda r: ApiKeyOut(**r.model_dump(exclude={"key"})),
    )


@router.get("", response_model=Page[ApiKeyOut], responses=problem_responses(422))
async def list_keys(
    _: AdminStaff,
    session: ReadSession,
    rt: RuntimeDep,
    university_id: uuid.UUID | None = None,
    include_inactive: bool = False,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[ApiKeyOut]:
    """Newest first; keys are masked. Revoked and expired keys only with `include_inactive`."""
    rows, next_cursor = await keys.list_keys(
        session, university_id=university_id, include_inactive=include_inactive, cursor=cursor, limit=limit
    )
    return Page[ApiKeyOut](items=[key_out(k, rt) for k in rows], next_cursor=next_cursor)


@router.get("/{key_id}", response_model=ApiKeyOut, responses=problem_responses(404))
async def get_key(key_id: uuid.UUID, _: AdminStaff, session: ReadSession, rt: RuntimeDep) -> ApiKeyOut:
    return key_out(await keys.get_key(session, key_id), rt)


@router.post(
    "/{key_id}/rotate",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyRotated,
    responses=problem_responses(404, 409, 422),
)
async def rotate_key(
    key_id: uuid.UUID,
    request: Request,
    actor: AdminStaff,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
    body: ApiKeyRotate | None = None,
    idempotency_key: OptionalIdempotencyKey = None,
) -> ApiKeyRotated:
    """A new key (shown only now) for the same university; the old one keeps working until
    `previous_expires_at` (default 24 hours), then answers 401."""

    async def rotate() -> ApiKeyRotated:
        until = body.previous_expires_at if body else None
        new, token, old = await keys.rotate_key(session, rt, actor, key_id, until, ctx)
        return ApiKeyRotated(**key_out(new, rt).model_dump(), key=token, previous=key_out(old, rt))

    return await create_once(
        session,
        request,
        scope=_scope(actor, "partner.keys.rotate"),
        key=idempotency_key,
        body=body,
        create=rotate,
        public=lambda r: ApiKeyOut(**r.model_dump(exclude={"key", "previous"})),
    )


@router.post("/{key_id}/revoke", response_model=ApiKeyOut, responses=problem_responses(404, 422))
async def revoke_key(
    key_id: uuid.UUID,
    body: ApiKeyRevoke,
    actor: AdminStaff,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
) -> ApiKeyOut:
    """At once: the next call with this key answers 401. Revoking again changes nothing."""
    return key_out(await keys.revoke_key(session, actor, key_id, body.reason, ctx), rt)
