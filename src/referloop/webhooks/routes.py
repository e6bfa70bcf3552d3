"""Webhook endpoint routes: partners manage their university's endpoints under
`/partner/v1/webhook-endpoints` (API key), staff manage operators' (and see everyone's) under
`/v1/staff/webhook-endpoints` (admin). A secret is shown once, in the answer that made it."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.context import RequestContext
from referloop.core.db import AsyncWriteSession
from referloop.core.deps import ContextDep, ReadSession, RuntimeDep, WriteSession
from referloop.core.errors import problem_responses
from referloop.core.idempotency import (
    KEY_MAX_LENGTH,
    REPLAY_HEADER,
    idempotency_key_header,
    request_fingerprint,
    run_idempotent,
)
from referloop.core.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page
from referloop.identity.deps import AdminStaff
from referloop.identity.service.accounts import get_user
from referloop.identity.service.sessions import Principal
from referloop.referrals.partner.deps import CurrentPartner, note_call
from referloop.referrals.partner.secret_once import create_once
from referloop.referrals.partner.service.keys import PartnerPrincipal
from referloop.referrals.service.catalogue import get_program, get_university
from referloop.runtime import Runtime
from referloop.webhooks import signing
from referloop.webhooks.models import (
    DeliveryStatus,
    OwnerType,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookMessage,
)
from referloop.webhooks.schemas import (
    AttemptOut,
    DeliveryDetail,
    DeliveryOut,
    EndpointCreate,
    EndpointOut,
    EndpointUpdate,
    EndpointWithSecret,
    OperatorEndpointCreate,
    OperatorEndpointUpdate,
    SecretRotate,
)
from referloop.webhooks.service import deliveries, endpoints
from referloop.webhooks.service.endpoints import EndpointOwner

partner_router = APIRouter(
    prefix="/partner/v1/webhook-endpoints", tags=["partner: webhooks"], responses=problem_responses(401, 429)
)
staff_router = APIRouter(
    prefix="/v1/staff/webhook-endpoints", tags=["staff: webhooks"], responses=problem_responses(401, 403)
)

IdempotencyKey = Annotated[str, Depends(idempotency_key_header)]
_REPLAY_CONTEXT = "webhooks.rotate_secret.replay"
Cursor = Annotated[str | None, Query(max_length=300, pattern=r"^[A-Za-z0-9_-]+$")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
OptionalIdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=KEY_MAX_LENGTH,
        description="Optional. A retry with the same key and body answers 409 `already_created` with the "
        "id of the endpoint the first try made (its secret is shown only once).",
    ),
]


def endpoint_out(e: WebhookEndpoint) -> EndpointOut:
    return EndpointOut(
        id=e.id,
        url=e.url,
        description=e.description,
        event_types=list(e.event_types),
        owner_type=OwnerType(e.owner_type),
        university_id=e.university_id,
        program_ids=list(e.program_ids),
        contact_email=e.owner_email,
        enabled=e.disabled_at is None,
        disabled_at=e.disabled_at,
        disabled_reason=e.disabled_reason,
        failing_since=e.failing_since,
        previous_secret_valid_until=e.previous_secret_expires_at,
        created_at=e.created_at,
        updated_at=e.updated_at,
    )


def delivery_out(d: WebhookDelivery, event_type: str) -> DeliveryOut:
    return DeliveryOut(
        id=d.id,
        message_id=signing.message_id(d.message_id),
        event_type=event_type,
        status=DeliveryStatus(d.status),
        attempts=d.attempts,
        next_attempt_at=d.next_attempt_at,
        last_attempt_at=d.last_attempt_at,
        last_status_code=d.last_status_code,
        last_error=d.last_error,
        succeeded_at=d.succeeded_at,
        created_at=d.created_at,
    )


def delivery_detail(d: WebhookDelivery, m: WebhookMessage, attempts: list[AttemptOut]) -> DeliveryDetail:
    return DeliveryDetail(
        **delivery_out(d, m.event_type).model_dump(), payload=m.payload, attempt_log=attempts
    )


def _with_secret(endpoint: WebhookEndpoint, secret: str) -> EndpointWithSecret:
    return EndpointWithSecret(**endpoint_out(endpoint).model_dump(), secret=secret)


def _public(result: EndpointWithSecret) -> EndpointOut:
    return EndpointOut(**result.model_dump(exclude={"secret"}))


def partner_owner(partner: PartnerPrincipal) -> EndpointOwner:
    return EndpointOwner(OwnerType.partner, partner.key_id, partner.university_id, partner.contact_email)


async def staff_owner(session: AsyncWriteSession, actor: Principal) -> EndpointOwner:
    user = await get_user(session, actor.user_id)
    return EndpointOwner(OwnerType.operator, actor.user_id, None, user.email)


async def _detail(
    session: AsyncSession, owner: EndpointOwner, endpoint_id: uuid.UUID, delivery_id: uuid.UUID
) -> DeliveryDetail:
    d, m, attempts = await deliveries.get_delivery(session, owner, endpoint_id, delivery_id)
    return delivery_detail(d, m, [AttemptOut.model_validate(a, from_attributes=True) for a in attempts])


def _rotation_scope(owner: EndpointOwner) -> str:
    who = owner.university_id if owner.owner_type is OwnerType.partner else owner.actor_id
    return f"webhooks.rotate_secret:{who}"


async def _rotate_once(
    session: AsyncWriteSession,
    rt: Runtime,
    request: Request,
    owner: EndpointOwner,
    endpoint_id: uuid.UUID,
    body: SecretRotate | None,
    key: str,
    ctx: RequestContext,
) -> JSONResponse:
    """Rotate once per Idempotency-Key: a retry replays the first answer, new secret included (it is
    kept encrypted in the idempotency record), instead of rotating again and dropping the secret the
    receiver still uses."""
    body = body or SecretRotate()

    async def handler() -> tuple[int, EndpointWithSecret]:
        rotated = await endpoints.rotate_secret(
            session, rt, owner, endpoint_id, body.previous_valid_seconds, ctx
        )
        return 200, _with_secret(*rotated)

    def kept(answer: dict[str, Any]) -> dict[str, Any]:
        return {**answer, "secret": rt.cipher.encrypt(answer["secret"], context=_REPLAY_CONTEXT)}

    response = await run_idempotent(
        session,
        scope=_rotation_scope(owner),
        key=key,
        fingerprint=request_fingerprint(request, body),
        handler=handler,
        kept_for_replay=kept,
    )
    if response.headers.get(REPLAY_HEADER) is None:
        return response
    stored: dict[str, Any] = orjson.loads(bytes(response.body))
    stored["secret"] = rt.cipher.decrypt(stored["secret"], context=_REPLAY_CONTEXT)
    return JSONResponse(stored, status_code=response.status_code, headers={REPLAY_HEADER: "true"})


# -- partner --------------------------------------------------------------------------------------


@partner_router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=EndpointWithSecret,
    responses=problem_responses(409, 422),
)
async def partner_create_endpoint(
    body: EndpointCreate,
    request: Request,
    partner: CurrentPartner,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
    idempotency_key: OptionalIdempotencyKey = None,
) -> EndpointWithSecret:
    """Receive your university's events (all, or the `event_types` listed). The answer's `secret`
    (`whsec_...`) is shown only now: verify each message's `webhook-signature` with it."""
    owner = partner_owner(partner)

    async def create() -> EndpointWithSecret:
        return _with_secret(*await endpoints.create_endpoint(session, rt, owner, body, ctx))

    result = await create_once(
        session,
        request,
        scope=f"webhooks.endpoints:{partner.university_id}",
        key=idempotency_key,
        body=body,
        create=create,
        public=_public,
    )
    note_call(
        request, "partner.webhook_endpoint_created", target_type="webhook_endpoint", target_id=result.id
    )
    return result


@partner_router.get("", response_model=Page[EndpointOut], responses=problem_responses(422))
async def partner_list_endpoints(
    partner: CurrentPartner, session: WriteSession, cursor: Cursor = None, limit: Limit = DEFAULT_LIMIT
) -> Page[EndpointOut]:
    rows, next_cursor = await endpoints.list_endpoints(
        session, partner_owner(partner), owner_type=None, university_id=None, cursor=cursor, limit=limit
    )
    return Page[EndpointOut](items=[endpoint_out(e) for e in rows], next_cursor=next_cursor)


@partner_router.get("/{endpoint_id}", response_model=EndpointOut, responses=problem_responses(404))
async def partner_get_endpoint(
    endpoint_id: uuid.UUID, partner: CurrentPartner, session: WriteSession
) -> EndpointOut:
    return endpoint_out(await endpoints.get_endpoint(session, partner_owner(partner), endpoint_id))


@partner_router.patch("/{endpoint_id}", response_model=EndpointOut, responses=problem_responses(404, 422))
async def partner_update_endpoint(
    endpoint_id: uuid.UUID,
    body: EndpointUpdate,
    partner: CurrentPartner,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
) -> EndpointOut:
    """Change the URL, events or contact; `enabled: true` re-enables a disabled endpoint."""
    return endpoint_out(
        await endpoints.update_endpoint(session, rt, partner_owner(partner), endpoint_id, body, ctx)
    )


@partner_router.delete(
    "/{endpoint_id}", status_code=status.HTTP_204_NO_CONTENT, responses=problem_responses(404)
)
async def partner_delete_endpoint(
    endpoint_id: uuid.UUID, partner: CurrentPartner, session: WriteSession, ctx: ContextDep
) -> Response:
    await endpoints.delete_endpoint(session, partner_owner(partner), endpoint_id, ctx)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@partner_router.post(
    "/{endpoint_id}/rotate-secret", response_model=EndpointWithSecret, responses=problem_responses(404, 422)
)
async def partner_rotate_secret(
    endpoint_id: uuid.UUID,
    request: Request,
    partner: CurrentPartner,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
    idempotency_key: IdempotencyKey,
    body: SecretRotate | None = None,
) -> JSONResponse:
    """A new secret (shown only now, and to a retry with the same Idempotency-Key). For
    `previous_valid_seconds` messages carry two signatures, one per secret, so you can switch without
    missing a message."""
    return await _rotate_once(
        session, rt, request, partner_owner(partner), endpoint_id, body, idempotency_key, ctx
    )


@partner_router.get(
    "/{endpoint_id}/deliveries", response_model=Page[DeliveryOut], responses=problem_responses(404, 422)
)
async def partner_list_deliveries(
    endpoint_id: uuid.UUID,
    partner: CurrentPartner,
    session: WriteSession,
    status: DeliveryStatus | None = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[DeliveryOut]:
    """The delivery log, newest first."""
    rows, next_cursor = await deliveries.list_deliveries(
        session, partner_owner(partner), endpoint_id, status=status, cursor=cursor, limit=limit
    )
    return Page[DeliveryOut](items=[delivery_out(d, t) for d, t in rows], next_cursor=next_cursor)


@partner_router.get(
    "/{endpoint_id}/deliveries/{delivery_id}", response_model=DeliveryDetail, responses=problem_responses(404)
)
async def partner_get_delivery(
    endpoint_id: uuid.UUID, delivery_id: uuid.UUID, partner: CurrentPartner, session: WriteSession
) -> DeliveryDetail:
    """One delivery with its message and every attempt (status code, latency, error)."""
    return await _detail(session, partner_owner(partner), endpoint_id, delivery_id)


@partner_router.post(
    "/{endpoint_id}/deliveries/{delivery_id}/redeliver",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeliveryOut,
    responses=problem_responses(404, 409),
)
async def partner_redeliver(
    endpoint_id: uuid.UUID,
    delivery_id: uuid.UUID,
    partner: CurrentPartner,
    session: WriteSession,
    ctx: ContextDep,
) -> DeliveryOut:
    """Send this message again (whatever its status) at once, with a fresh retry window."""
    d, m = await deliveries.redeliver(session, partner_owner(partner), endpoint_id, delivery_id, ctx)
    return delivery_out(d, m.event_type)


# -- staff ----------------------------------------------------------------------------------------


async def _check_filters(
    session: AsyncWriteSession, university_id: uuid.UUID | None, program_ids: list[uuid.UUID] | None
) -> None:
    if university_id is not None:
        await get_university(session, university_id)
    for program_id in program_ids or []:
        await get_program(session, program_id)


@staff_router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=EndpointWithSecret,
    responses=problem_responses(404, 409, 422),
)
async def staff_create_endpoint(
    body: OperatorEndpointCreate,
    request: Request,
    actor: AdminStaff,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
    idempotency_key: OptionalIdempotencyKey = None,
) -> EndpointWithSecret:
    """An operator endpoint: every event, or those of `university_id` and/or `program_ids`."""
    await _check_filters(session, body.university_id, body.program_ids)
    owner = await staff_owner(session, actor)

    async def create() -> EndpointWithSecret:
        return _with_secret(*await endpoints.create_endpoint(session, rt, owner, body, ctx))

    return await create_once(
        session,
        request,
        scope=f"webhooks.endpoints:{actor.user_id}",
        key=idempotency_key,
        body=body,
        create=create,
        public=_public,
    )


@staff_router.get("", response_model=Page[EndpointOut], responses=problem_responses(422))
async def staff_list_endpoints(
    actor: AdminStaff,
    session: ReadSession,
    owner_type: OwnerType | None = None,
    university_id: uuid.UUID | None = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[EndpointOut]:
    """Every endpoint, partners' included (filter with `owner_type`, `university_id`)."""
    rows, next_cursor = await endpoints.list_endpoints(
        session,
        EndpointOwner(OwnerType.operator, actor.user_id, None, None),
        owner_type=owner_type,
        university_id=university_id,
        cursor=cursor,
        limit=limit,
    )
    return Page[EndpointOut](items=[endpoint_out(e) for e in rows], next_cursor=next_cursor)


@staff_router.get("/{endpoint_id}", response_model=EndpointOut, responses=problem_responses(404))
async def staff_get_endpoint(endpoint_id: uuid.UUID, actor: AdminStaff, session: ReadSession) -> EndpointOut:
    owner = EndpointOwner(OwnerType.operator, actor.user_id, None, None)
    return endpoint_out(await endpoints.get_endpoint(session, owner, endpoint_id))


@staff_router.patch("/{endpoint_id}", response_model=EndpointOut, responses=problem_responses(404, 422))
async def staff_update_endpoint(
    endpoint_id: uuid.UUID,
    body: OperatorEndpointUpdate,
    actor: AdminStaff,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
) -> EndpointOut:
    await _check_filters(session, None, body.program_ids)
    owner = EndpointOwner(OwnerType.operator, actor.user_id, None, None)
    return endpoint_out(await endpoints.update_endpoint(session, rt, owner, endpoint_id, body, ctx))


@staff_router.delete(
    "/{endpoint_id}", status_code=status.HTTP_204_NO_CONTENT, responses=problem_responses(404)
)
async def staff_delete_endpoint(
    endpoint_id: uuid.UUID, actor: AdminStaff, session: WriteSession, ctx: ContextDep
) -> Response:
    owner = EndpointOwner(OwnerType.operator, actor.user_id, None, None)
    await endpoints.delete_endpoint(session, owner, endpoint_id, ctx)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@staff_router.post(
    "/{endpoint_id}/rotate-secret", response_model=EndpointWithSecret, responses=problem_responses(404, 422)
)
async def staff_rotate_secret(
    endpoint_id: uuid.UUID,
    request: Request,
    actor: AdminStaff,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
    idempotency_key: IdempotencyKey,
    body: SecretRotate | None = None,
) -> JSONResponse:
    owner = EndpointOwner(OwnerType.operator, actor.user_id, None, None)
    return await _rotate_once(session, rt, request, owner, endpoint_id, body, idempotency_key, ctx)


@staff_router.get(
    "/{endpoint_id}/deliveries", response_model=Page[DeliveryOut], responses=problem_responses(404, 422)
)
async def staff_list_deliveries(
    endpoint_id: uuid.UUID,
    actor: AdminStaff,
    session: ReadSession,
    status: DeliveryStatus | None = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[DeliveryOut]:
    owner = EndpointOwner(OwnerType.operator, actor.user_id, None, None)
    rows, next_cursor = await deliveries.list_deliveries(
        session, owner, endpoint_id, status=status, cursor=cursor, limit=limit
    )
    return Page[DeliveryOut](items=[delivery_out(d, t) for d, t in rows], next_cursor=next_cursor)


@staff_router.get(
    "/{endpoint_id}/deliveries/{delivery_id}", response_model=DeliveryDetail, responses=problem_responses(404)
)
async def staff_get_delivery(
    endpoint_id: uuid.UUID, delivery_id: uuid.UUID, actor: AdminStaff, session: ReadSession
) -> DeliveryDetail:
    owner = EndpointOwner(OwnerType.operator, actor.user_id, None, None)
    return await _detail(session, owner, endpoint_id, delivery_id)


@staff_router.post(
    "/{endpoint_id}/deliveries/{delivery_id}/redeliver",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeliveryOut,
    responses=problem_responses(404, 409),
)
async def staff_redeliver(
    endpoint_id: uuid.UUID, delivery_id: uuid.UUID, actor: AdminStaff, session: WriteSession, ctx: ContextDep
) -> DeliveryOut:
    owner = EndpointOwner(OwnerType.operator, actor.user_id, None, None)
    d, m = await deliveries.redeliver(session, owner, endpoint_id, delivery_id, ctx)
    return delivery_out(d, m.event_type)
