"""Partner API keys: made and managed by staff (audited), presented by partners.

A key is `rlp_live_` (`rlp_test_` outside production) and 32 base62 characters (~190 bits). Only its
SHA-256 is stored, with a display prefix and the last four characters for lists. Rotation makes a new
key and gives the old one an end (the overlap); after it, or once revoked, the old key answers 401."""

from __future__ import annotations

import hashlib
import secrets
import string
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.compliance import audit
from referloop.config import Environment, Settings
from referloop.core.context import RequestContext
from referloop.core.db import utcnow
from referloop.core.errors import InvalidInput
from referloop.core.pagination import paginate_by_id_desc, split_page
from referloop.identity.service.sessions import Principal
from referloop.referrals.models import University
from referloop.referrals.partner.errors import ApiKeyNotFound, ApiKeyRevoked, InvalidApiKey
from referloop.referrals.partner.models import PartnerApiKey
from referloop.referrals.partner.schemas import ApiKeyCreate
from referloop.referrals.service.catalogue import get_university
from referloop.runtime import Runtime

KEY_PREFIX = "rlp_"
_ALPHABET = string.ascii_letters + string.digits
_SECRET_CHARS = 32
_MAX_KEY_LENGTH = 64
DEFAULT_OVERLAP = timedelta(hours=24)
MAX_OVERLAP = timedelta(days=30)
# last_used_at is written at most this often per key (it is informational; a write per call is waste).
_LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class PartnerPrincipal:
    key_id: uuid.UUID
    key_name: str
    university_id: uuid.UUID
    contact_email: str
    rate_limit: str
    expires_at: datetime | None


def new_token(settings: Settings) -> str:
    mode = "live" if settings.env is Environment.production else "test"
    return f"{KEY_PREFIX}{mode}_" + "".join(secrets.choice(_ALPHABET) for _ in range(_SECRET_CHARS))


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def masked(key: PartnerApiKey) -> str:
    return f"{key.display_prefix}{'*' * 8}{key.last4}"


def effective_rate_limit(key: PartnerApiKey, settings: Settings) -> str:
    return key.rate_limit or settings.partner_rate_limit


KeyStatus = Literal["active", "expiring", "expired", "revoked"]


def key_status(key: PartnerApiKey, now: datetime) -> KeyStatus:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None:
        return "expired" if key.expires_at <= now else "expiring"
    return "active"


def _snapshot(key: PartnerApiKey) -> dict[str, Any]:
    return {
        "university_id": str(key.university_id),
        "name": key.name,
        "masked_key": masked(key),
        "contact_email": key.contact_email,
        "rate_limit": key.rate_limit,
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "replaced_by_id": str(key.replaced_by_id) if key.replaced_by_id else None,
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
    }


async def authenticate(session: AsyncSession, rt: Runtime, token: str) -> PartnerPrincipal:
    """The key's principal, or 401 for an unknown, revoked or expired key (the same answer for
    each: a caller learns nothing about keys it does not hold)."""
    refused = InvalidApiKey("The API key is invalid, revoked or expired.")
    if not token.startswith(KEY_PREFIX) or len(token) > _MAX_KEY_LENGTH:
        raise refused
    now = utcnow()
    row = (
        await session.execute(
            select(PartnerApiKey)
            .join(University, University.id == PartnerApiKey.university_id)
            .where(
                PartnerApiKey.token_hash == hash_token(token),
                PartnerApiKey.revoked_at.is_(None),
                or_(PartnerApiKey.expires_at.is_(None), PartnerApiKey.expires_at > now),
                University.deleted_at.is_(None),
            )
        )
    ).scalar_one_or_none()
    if row is None:
        raise refused
    if row.last_used_at is None or row.last_used_at < now - _LAST_USED_RESOLUTION:
        await session.execute(
            update(PartnerApiKey).where(PartnerApiKey.id == row.id).values(last_used_at=now)
        )
    return PartnerPrincipal(
        key_id=row.id,
        key_name=row.name,
        university_id=row.university_id,
        contact_email=row.contact_email,
        rate_limit=effective_rate_limit(row, rt.settings),
        expires_at=row.expires_at,
    )


def _new_key(
    rt: Runtime,
    *,
    university_id: uuid.UUID,
    name: str,
    contact_email: str,
    rate_limit: str | None,
    created_by: uuid.UUID,
) -> tuple[PartnerApiKey, str]:
    token = new_token(rt.settings)
    key = PartnerApiKey(
        university_id=university_id,
        name=name,
        token_hash=hash_token(token),
        display_prefix=token[: len(KEY_PREFIX) + 5 + 4],  # rlp_live_ + 4 characters
        last4=token[-4:],
        contact_email=contact_email,
        rate_limit=rate_limit,
        created_by=created_by,
    )
    return key, token


async def create_key(
    session: AsyncSession, rt: Runtime, actor: Principal, data: ApiKeyCreate, ctx: RequestContext
) -> tuple[PartnerApiKey, str]:
    await get_university(session, data.university_id)
    key, token = _new_key(
        rt,
        university_id=data.university_id,
        name=data.name,
        contact_email=data.contact_email,
        rate_limit=data.rate_limit,
        created_by=actor.user_id,
    )
    session.add(key)
    await session.flush()
    await audit.record(
        session,
        action="partner.api_key_created",
        actor_id=actor.user_id,
        actor_type="staff",
        target_type="partner_api_key",
        target_id=key.id,
        after=_snapshot(key),
        ctx=ctx,
    )
    return key, token


async def get_key(session: AsyncSession, key_id: uuid.UUID, *, for_update: bool = False) -> PartnerApiKey:
    stmt = select(PartnerApiKey).where(PartnerApiKey.id == key_id)
    if for_update:
        stmt = stmt.with_for_update()
    key = await session.scalar(stmt)
    if key is None:
        raise ApiKeyNotFound("No such API key.")
    return key


async def list_keys(
    session: AsyncSession,
    *,
    university_id: uuid.UUID | None,
    include_inactive: bool,
    cursor: str | None,
    limit: int,
) -> tuple[list[PartnerApiKey], str | None]:
    stmt = select(PartnerApiKey)
    if university_id is not None:
        stmt = stmt.where(PartnerApiKey.university_id == university_id)
    if not include_inactive:
        stmt = stmt.where(
            PartnerApiKey.revoked_at.is_(None),
            or_(PartnerApiKey.expires_at.is_(None), PartnerApiKey.expires_at > utcnow()),
        )
    rows = list((await session.scalars(paginate_by_id_desc(stmt, PartnerApiKey.id, cursor, limit))).all())
    return split_page(rows, limit, lambda k: [k.id])


async def rotate_key(
    session: AsyncSession,
    rt: Runtime,
    actor: Principal,
    key_id: uuid.UUID,
    previous_expires_at: datetime | None,
    ctx: RequestContext,
) -> tuple[PartnerApiKey, str, PartnerApiKey]:
    """(new key, its token, the old key). Only a live key that was not rotated yet can be rotated."""
    old = await get_key(session, key_id, for_update=True)
    now = utcnow()
    if old.revoked_at is not None:
        raise ApiKeyRevoked("A revoked key cannot be rotated; create a new key.")
    if old.replaced_by_id is not None or (old.expires_at is not None and old.expires_at <= now):
        raise ApiKeyRevoked("This key was already rotated; rotate its replacement instead.")
    end = previous_expires_at or now + DEFAULT_OVERLAP
    if end > now + MAX_OVERLAP:
        raise InvalidInput("The overlap is at most 30 days.")
    new, token = _new_key(
        rt,
        university_id=old.university_id,
        name=old.name,
        contact_email=old.contact_email,
        rate_limit=old.rate_limit,
        created_by=actor.user_id,
    )
    session.add(new)
    await session.flush()
    before = _snapshot(old)
    old.expires_at = max(end, now)
    old.replaced_by_id = new.id
    old.updated_at = now
    await session.flush()
    await audit.record(
        session,
        action="partner.api_key_rotated",
        actor_id=actor.user_id,
        actor_type="staff",
        target_type="partner_api_key",
        target_id=old.id,
        before=before,
        after={**_snapshot(old), "new_key_id": str(new.id), "new_masked_key": masked(new)},
        ctx=ctx,
    )
    return new, token, old


async def revoke_key(
    session: AsyncSession, actor: Principal, key_id: uuid.UUID, reason: str, ctx: RequestContext
) -> PartnerApiKey:
    """Immediate: the next call with this key answers 401. Revoking twice changes nothing."""
    key = await get_key(session, key_id, for_update=True)
    if key.revoked_at is not None:
        return key
    before = _snapshot(key)
    key.revoked_at = utcnow()
    key.revoked_by = actor.user_id
    key.revoked_reason = reason
    await session.flush()
    await audit.record(
        session,
        action="partner.api_key_revoked",
        actor_id=actor.user_id,
        actor_type="staff",
        target_type="partner_api_key",
        target_id=key.id,
        before=before,
        after={**_snapshot(key), "reason": reason},
        ctx=ctx,
    )
    return key
