"""Sign-in sessions and their rotating refresh tokens (RFC 9700 §4.14 refresh token rotation)."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.compliance import audit
from referloop.core.context import RequestContext
from referloop.core.db import utcnow
from referloop.core.ids import uuid7
from referloop.core.security.fields import FieldCipher
from referloop.core.security.tokens import hash_token, new_opaque_token
from referloop.identity.errors import InvalidToken, RefreshTokenReused
from referloop.identity.models import AuthSession, RefreshToken, User
from referloop.identity.schemas import TokenPair
from referloop.runtime import Runtime

REVOKED_KEY = "auth:revoked:{{s:{sid}}}"
GRACE_KEY = "auth:grace:{{t:{token_hash}}}"


@dataclass(frozen=True)
class Principal:
    user_id: uuid.UUID
    session_id: uuid.UUID
    role: str
    mfa: bool


def _ip(ctx: RequestContext) -> str | None:
    return (ctx.ip or "")[:64] or None


async def _new_refresh_token(session: AsyncSession, session_id: uuid.UUID, expires_at: datetime) -> str:
    token = new_opaque_token("rt")
    await session.execute(
        insert(RefreshToken).values(
            id=uuid7(),
            session_id=session_id,
            token_hash=hash_token(token),
            created_at=utcnow(),
            expires_at=expires_at,
        )
    )
    return token


async def start_session(
    session: AsyncSession,
    rt: Runtime,
    user: User,
    ctx: RequestContext,
    *,
    mfa: bool,
    device_name: str | None,
) -> TokenPair:
    now = utcnow()
    expires_at = now + timedelta(days=rt.settings.refresh_token_ttl_days)
    session_id = uuid7()
    await session.execute(
        insert(AuthSession).values(
            id=session_id,
            user_id=user.id,
            created_at=now,
            last_used_at=now,
            expires_at=expires_at,
            ip=_ip(ctx),
            user_agent=(ctx.user_agent or "")[:512] or None,
            device_name=device_name,
            mfa=mfa,
        )
    )
    refresh = await _new_refresh_token(session, session_id, expires_at)
    access, ttl = rt.signer.issue(user_id=user.id, session_id=session_id, role=user.role, mfa=mfa)
    return TokenPair(access_token=access, refresh_token=refresh, expires_in=ttl, session_id=session_id)


def _grace_cipher(presented_token: str) -> FieldCipher:
    # The cached pair is encrypted under a key derived from the presented token itself: Redis never
    # holds a usable token, and only someone holding the old token can read the new pair.
    return FieldCipher({"g": hashlib.sha256(b"grace:" + presented_token.encode()).digest()})


async def refresh(session: AsyncSession, rt: Runtime, presented: str, ctx: RequestContext) -> TokenPair:
    token_hash = hash_token(presented)
    row = (
        await session.execute(
            select(RefreshToken, AuthSession, User)
            .join(AuthSession, AuthSession.id == RefreshToken.session_id)
            .join(User, User.id == AuthSession.user_id)
            .where(RefreshToken.token_hash == token_hash)
            .with_for_update(of=RefreshToken)
        )
    ).first()
    if row is None:
        raise InvalidToken("This refresh token is not valid.")
    token, auth_session, user = row
    now = utcnow()
    if auth_session.revoked_at is not None or user.deleted_at is not None:
        raise InvalidToken("This session has ended; sign in again.")
    if token.expires_at <= now or auth_session.expires_at <= now:
        raise InvalidToken("This refresh token has expired; sign in again.")
    # Per account as well as per IP (the route counts that one): many devices, one budget.
    await rt.limiter.hit(rt.settings.rate_limit_refresh, "refresh-account", str(user.id))

    grace_key = GRACE_KEY.format(token_hash=token_hash.hex())
    if token.used_at is not None:
        if now - token.used_at <= timedelta(seconds=rt.settings.refresh_reuse_grace_seconds):
            # A flaky network retried the same refresh: answer with the pair the first call issued.
            cached = await rt.redis.get(grace_key)
            if cached is not None:
                sealed = cached.decode() if isinstance(cached, bytes) else cached
                return TokenPair.model_validate(
                    orjson.loads(_grace_cipher(presented).decrypt(sealed, context="grace"))
                )
        await revoke_session(session, rt, auth_session.id, reason="refresh_token_reused")
        await audit.record(
            session,
            action="auth.refresh_reuse",
            actor_id=user.id,
            target_type="auth_session",
            target_id=auth_session.id,
            after={"revoked": True},
            ctx=ctx,
        )
        raise RefreshTokenReused(
            "This refresh token was already used; every token of its session is revoked."
        )

    token.used_at = now
    auth_session.last_used_at = now
    auth_session.ip = _ip(ctx) or auth_session.ip
    new_refresh = await _new_refresh_token(session, auth_session.id, auth_session.expires_at)
    access, ttl = rt.signer.issue(
        user_id=user.id, session_id=auth_session.id, role=user.role, mfa=auth_session.mfa
    )
    pair = TokenPair(
        access_token=access, refresh_token=new_refresh, expires_in=ttl, session_id=auth_session.id
    )
    await session.flush()
    if rt.settings.refresh_reuse_grace_seconds:
        sealed = _grace_cipher(presented).encrypt(pair.model_dump_json(), context="grace")
        await rt.redis.set(grace_key, sealed, ex=rt.settings.refresh_reuse_grace_seconds)
    return pair


async def revoke_session(session: AsyncSession, rt: Runtime, session_id: uuid.UUID, *, reason: str) -> bool:
    result = await session.execute(
        update(AuthSession)
        .where(AuthSession.id == session_id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=utcnow(), revoked_reason=reason)
    )
    # Access tokens of the session stop working at once, not when they expire.
    await rt.redis.set(REVOKED_KEY.format(sid=session_id), b"1", ex=rt.settings.access_token_ttl_seconds + 60)
    return bool(getattr(result, "rowcount", 0))


async def revoke_all_sessions(
    session: AsyncSession, rt: Runtime, user_id: uuid.UUID, *, reason: str, keep: uuid.UUID | None = None
) -> int:
    stmt = select(AuthSession.id).where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None))
    if keep is not None:
        stmt = stmt.where(AuthSession.id != keep)
    ids = list((await session.scalars(stmt)).all())
    for sid in ids:
        await revoke_session(session, rt, sid, reason=reason)
    return len(ids)


async def list_sessions(session: AsyncSession, user_id: uuid.UUID) -> list[AuthSession]:
    now = utcnow()
    return list(
        (
            await session.scalars(
                select(AuthSession)
                .where(
                    AuthSession.user_id == user_id,
                    AuthSession.revoked_at.is_(None),
                    AuthSession.expires_at > now,
                )
                .order_by(AuthSession.last_used_at.desc())
                .limit(200)
            )
        ).all()
    )


async def is_session_revoked(rt: Runtime, session_id: uuid.UUID) -> bool:
    return bool(await rt.redis.exists(REVOKED_KEY.format(sid=session_id)))
