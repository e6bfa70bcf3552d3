"""Registering and managing webhook endpoints. Partners see and change only their university's
endpoints (another's answer 404); staff see all of them. Every change is audited."""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Select, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.compliance import audit
from referloop.config import Environment, Settings
from referloop.core.context import RequestContext
from referloop.core.db import utcnow
from referloop.core.pagination import paginate_by_id_desc, split_page
from referloop.core.security.rotation import BATCH, RotationResult, reencrypt_columns
from referloop.runtime import Runtime
from referloop.webhooks import signing
from referloop.webhooks.errors import EndpointNotFound, EndpointUrlRefused
from referloop.webhooks.models import DeliveryStatus, OwnerType, WebhookDelivery, WebhookEndpoint
from referloop.webhooks.schemas import (
    EndpointCreate,
    EndpointUpdate,
    OperatorEndpointCreate,
    OperatorEndpointUpdate,
)
from referloop.webhooks.service import egress

SECRET_CONTEXT = "webhook_endpoints.secret"  # noqa: S105 - encryption context, not a secret
_RESOLVE_SECONDS = 5.0
_FIELDS = ("url", "description", "event_types", "university_id", "program_ids", "owner_email", "disabled_at")


@dataclass(frozen=True)
class EndpointOwner:
    """Who is calling: a partner key (scoped to its university) or a staff member (all endpoints)."""

    owner_type: OwnerType
    actor_id: uuid.UUID
    university_id: uuid.UUID | None
    default_email: str | None

    @property
    def audit_actor_type(self) -> str:
        return "partner" if self.owner_type is OwnerType.partner else "staff"


def _loopback_host(host: str) -> bool:
    host = host.removesuffix(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def check_url(url: str, settings: Settings) -> str:
    """https only; plain http only to a loopback address, and never in production. An IP address
    must be written in its standard form (`127.1` or `2130706433` is refused everywhere). In
    production the host must not be, or resolve to, a private, loopback, link-local or reserved
    address (we would be calling into our own network). A name that does not resolve yet is accepted:
    the sender checks the addresses again before every connection (see `egress`)."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port  # raises for a port out of range
    except ValueError as exc:
        raise EndpointUrlRefused("The URL is not valid.") from exc
    if parts.scheme not in ("https", "http") or not host:
        raise EndpointUrlRefused("The URL must be an https:// URL with a host.")
    if parts.username is not None or parts.password is not None:
        raise EndpointUrlRefused("Credentials in the URL are not allowed; authenticate with the signature.")
    if parts.fragment:
        raise EndpointUrlRefused("The URL must not have a #fragment.")
    if ":" in host and not _is_ip(host):
        raise EndpointUrlRefused("The URL is not valid.")
    if egress.non_canonical_ip(host):
        raise EndpointUrlRefused("Write an IP address in its standard dotted form (like 203.0.113.7).")
    production = settings.env is Environment.production
    if parts.scheme == "http" and (production or not _loopback_host(host)):
        raise EndpointUrlRefused("The URL must use https (http only to a loopback address in development).")
    if egress.allows_private(settings):
        return url
    if _loopback_host(host):
        raise EndpointUrlRefused("The URL must not point at a loopback address.")
    if _is_ip(host):
        addresses = [host]
    else:
        try:
            async with asyncio.timeout(_RESOLVE_SECONDS):
                addresses = await egress.resolve(host, port or 443)
        except (OSError, TimeoutError):
            addresses = []  # not resolvable (yet): the sender's check decides at send time
        except (UnicodeError, ValueError) as exc:  # a label over 63 characters, an empty label
            raise EndpointUrlRefused("The URL's host is not a valid name.") from exc
    if not all(egress.is_public(a) for a in addresses):
        raise EndpointUrlRefused("The URL must not point at a private or reserved address.")
    return url


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _scoped(stmt: Select[Any], owner: EndpointOwner) -> Select[Any]:
    stmt = stmt.where(WebhookEndpoint.deleted_at.is_(None))
    if owner.owner_type is OwnerType.partner:
        stmt = stmt.where(
            WebhookEndpoint.owner_type == OwnerType.partner.value,
            WebhookEndpoint.university_id == owner.university_id,
        )
    return stmt


def _snapshot(endpoint: WebhookEndpoint) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _FIELDS:
        value = getattr(endpoint, name)
        if isinstance(value, list):
            value = [str(v) for v in value]
        elif isinstance(value, (uuid.UUID, datetime)):
            value = str(value)
        out[name] = value
    return out


async def _audit(
    session: AsyncSession,
    owner: EndpointOwner,
    action: str,
    endpoint: WebhookEndpoint,
    ctx: RequestContext,
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    await audit.record(
        session,
        action=action,
        actor_id=owner.actor_id,
        actor_type=owner.audit_actor_type,
        target_type="webhook_endpoint",
        target_id=endpoint.id,
        before=before,
        after=after,
        ctx=ctx,
    )


def _unique(values: list[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


async def create_endpoint(
    session: AsyncSession, rt: Runtime, owner: EndpointOwner, data: EndpointCreate, ctx: RequestContext
) -> tuple[WebhookEndpoint, str]:
    """Returns the endpoint and its secret (shown once; stored encrypted)."""
    url = await check_url(data.url, rt.settings)
    email = data.contact_email or owner.default_email
    if not email:
        raise EndpointUrlRefused("Give a contact_email: who is told when the endpoint gets disabled.")
    if owner.owner_type is OwnerType.partner:
        university_id, program_ids = owner.university_id, []
    else:
        assert isinstance(data, OperatorEndpointCreate)
        university_id, program_ids = data.university_id, _unique(data.program_ids)
    secret = signing.generate_secret()
    endpoint = WebhookEndpoint(
        url=url,
        description=data.description,
        secret=rt.cipher.encrypt(secret, context=SECRET_CONTEXT),
        event_types=_unique(list(data.event_types)),
        owner_type=owner.owner_type.value,
        university_id=university_id,
        program_ids=program_ids,
        owner_email=email,
        created_by=owner.actor_id,
    )
    session.add(endpoint)
    await session.flush()
    await _audit(session, owner, "webhooks.endpoint_created", endpoint, ctx, after=_snapshot(endpoint))
    return endpoint, secret


async def list_endpoints(
    session: AsyncSession,
    owner: EndpointOwner,
    *,
    owner_type: OwnerType | None,
    university_id: uuid.UUID | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[WebhookEndpoint], str | None]:
    stmt = _scoped(select(WebhookEndpoint), owner)
    if owner_type is not None:
        stmt = stmt.where(WebhookEndpoint.owner_type == owner_type.value)
    if university_id is not None:
        stmt = stmt.where(WebhookEndpoint.university_id == university_id)
    rows = list((await session.scalars(paginate_by_id_desc(stmt, WebhookEndpoint.id, cursor, limit))).all())
    return split_page(rows, limit, lambda e: [e.id])


async def get_endpoint(
    session: AsyncSession, owner: EndpointOwner, endpoint_id: uuid.UUID, *, for_update: bool = False
) -> WebhookEndpoint:
    stmt = _scoped(select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id), owner)
    if for_update:
        stmt = stmt.with_for_update()
    endpoint: WebhookEndpoint | None = await session.scalar(stmt)
    if endpoint is None:
        raise EndpointNotFound("No such webhook endpoint.")
    return endpoint


async def update_endpoint(
    session: AsyncSession,
    rt: Runtime,
    owner: EndpointOwner,
    endpoint_id: uuid.UUID,
    data: EndpointUpdate,
    ctx: RequestContext,
) -> WebhookEndpoint:
    endpoint = await get_endpoint(session, owner, endpoint_id, for_update=True)
    before = _snapshot(endpoint)
    changes = data.model_dump(exclude_unset=True)
    if changes.get("url") is not None:
        endpoint.url = await check_url(changes["url"], rt.settings)
    if changes.get("description") is not None:
        endpoint.description = changes["description"]
    if changes.get("event_types") is not None:
        endpoint.event_types = _unique(changes["event_types"])
    if changes.get("contact_email") is not None:
        endpoint.owner_email = changes["contact_email"]
    if isinstance(data, OperatorEndpointUpdate) and data.program_ids is not None:
        endpoint.program_ids = _unique(data.program_ids)
    if changes.get("enabled") is True and endpoint.disabled_at is not None:
        endpoint.disabled_at = None
        endpoint.disabled_reason = None
        endpoint.failing_since = None  # a fresh start: the disable clock runs again from the next failure
    elif changes.get("enabled") is False and endpoint.disabled_at is None:
        endpoint.disabled_at = utcnow()
        endpoint.disabled_reason = "Disabled by its owner."
    endpoint.updated_at = utcnow()
    await session.flush()
    await _audit(
        session, owner, "webhooks.endpoint_updated", endpoint, ctx, before=before, after=_snapshot(endpoint)
    )
    return endpoint


async def delete_endpoint(
    session: AsyncSession, owner: EndpointOwner, endpoint_id: uuid.UUID, ctx: RequestContext
) -> None:
    """Soft delete: the delivery log stays; deliveries still pending are given up."""
    endpoint = await get_endpoint(session, owner, endpoint_id, for_update=True)
    now = utcnow()
    endpoint.deleted_at = now
    await session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.endpoint_id == endpoint.id,
            WebhookDelivery.status == DeliveryStatus.pending.value,
        )
        .values(status=DeliveryStatus.failed.value, next_attempt_at=None, last_error="Endpoint deleted.")
    )
    await session.flush()
    await _audit(session, owner, "webhooks.endpoint_deleted", endpoint, ctx, before=_snapshot(endpoint))


async def rotate_secret(
    session: AsyncSession,
    rt: Runtime,
    owner: EndpointOwner,
    endpoint_id: uuid.UUID,
    previous_valid_seconds: int,
    ctx: RequestContext,
) -> tuple[WebhookEndpoint, str]:
    """A new secret signs from now on; for `previous_valid_seconds` every message also carries a
    signature made with the old one, so a receiver can switch at its own pace."""
    endpoint = await get_endpoint(session, owner, endpoint_id, for_update=True)
    secret = signing.generate_secret()
    now = utcnow()
    if previous_valid_seconds > 0:
        endpoint.previous_secret = endpoint.secret
        endpoint.previous_secret_expires_at = now + timedelta(seconds=previous_valid_seconds)
    else:
        endpoint.previous_secret = None
        endpoint.previous_secret_expires_at = None
    endpoint.secret = rt.cipher.encrypt(secret, context=SECRET_CONTEXT)
    endpoint.updated_at = now
    await session.flush()
    await _audit(
        session,
        owner,
        "webhooks.endpoint_secret_rotated",
        endpoint,
        ctx,
        after={"previous_valid_until": str(endpoint.previous_secret_expires_at)},
    )
    return endpoint, secret


def signing_secrets(rt: Runtime, endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    """The secrets to sign with: the current one, and the previous one while it is still valid."""
    out = [rt.cipher.decrypt(endpoint.secret, context=SECRET_CONTEXT)]
    if (
        endpoint.previous_secret
        and endpoint.previous_secret_expires_at is not None
        and endpoint.previous_secret_expires_at > now
    ):
        out.append(rt.cipher.decrypt(endpoint.previous_secret, context=SECRET_CONTEXT))
    return out


async def rotate_secret_keys(rt: Runtime, batch: int = BATCH) -> RotationResult:
    """Re-encrypt endpoint secrets (current and previous) not under the primary field key
    (`referloop keys rotate`)."""
    return await reencrypt_columns(
        rt.db.sessionmaker,
        rt.cipher,
        WebhookEndpoint,
        {"secret": SECRET_CONTEXT, "previous_secret": SECRET_CONTEXT},
        table="webhook_endpoints.secret",
        batch=batch,
    )
