"""One-time codes: 6 digits, 10 minutes, 5 attempts; delivered through the outbox."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.db import utcnow
from referloop.core.ids import uuid7
from referloop.identity.errors import CodeRejected
from referloop.identity.models import CodePurpose, OneTimeCode, User
from referloop.notifications import service as notifications
from referloop.runtime import Runtime


def _code_hash(user_id: uuid.UUID, purpose: str, code: str) -> bytes:
    return hashlib.sha256(f"{user_id}:{purpose}:{code}".encode()).digest()


async def issue_code(
    session: AsyncSession, rt: Runtime, user: User, purpose: CodePurpose, target: str
) -> None:
    """Replace any earlier code for this purpose and send a new one to `target`."""
    now = utcnow()
    await session.execute(
        update(OneTimeCode)
        .where(
            OneTimeCode.user_id == user.id,
            OneTimeCode.purpose == purpose.value,
            OneTimeCode.consumed_at.is_(None),
        )
        .values(consumed_at=now)
    )
    code = f"{secrets.randbelow(1_000_000):06d}"
    session.add(
        OneTimeCode(
            id=uuid7(),
            user_id=user.id,
            purpose=purpose.value,
            target=target,
            code_hash=_code_hash(user.id, purpose.value, code),
            created_at=now,
            expires_at=now + timedelta(seconds=rt.settings.otp_code_ttl_seconds),
        )
    )
    minutes = rt.settings.otp_code_ttl_seconds // 60
    context = {"display_name": user.display_name, "code": code, "minutes": minutes}
    if purpose is CodePurpose.verify_phone:
        await notifications.send_sms(
            session, rt, to=target, template="verify_phone", locale=user.locale, context=context
        )
    else:
        await notifications.send_email(
            session, rt, to=target, template=purpose.value, locale=user.locale, context=context
        )
    await session.flush()


async def consume_code(
    session: AsyncSession, rt: Runtime, user: User, purpose: CodePurpose, code: str, target: str | None
) -> None:
    """Accept the latest live code or raise CodeRejected (the attempt is counted and kept)."""
    now = utcnow()
    row = (
        await session.scalars(
            select(OneTimeCode)
            .where(
                OneTimeCode.user_id == user.id,
                OneTimeCode.purpose == purpose.value,
                OneTimeCode.consumed_at.is_(None),
            )
            .order_by(OneTimeCode.created_at.desc())
            .limit(1)
            .with_for_update()
        )
    ).first()
    if row is None or (target is not None and row.target != target):
        raise CodeRejected("No code is waiting; request a new one.")
    if row.expires_at <= now:
        raise CodeRejected("This code has expired; request a new one.")
    if row.attempts >= rt.settings.otp_max_attempts:
        raise CodeRejected("Too many wrong attempts; request a new code.")
    if not hmac.compare_digest(row.code_hash, _code_hash(user.id, purpose.value, code)):
        row.attempts += 1
        left = rt.settings.otp_max_attempts - row.attempts
        raise CodeRejected(
            f"Wrong code; {left} attempt{'s' if left != 1 else ''} left."
            if left
            else "Wrong code; no attempts left, request a new code.",
            attempts_left=left,
        )
    row.consumed_at = now
