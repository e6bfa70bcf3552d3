"""TOTP (RFC 6238) enrolment and checking, with pyotp. A code is never accepted twice."""

from __future__ import annotations

import time

import pyotp

from referloop.core.db import utcnow
from referloop.core.errors import Conflict, Forbidden
from referloop.core.security.rotation import BATCH, RotationResult, reencrypt_columns
from referloop.identity.models import Role, User
from referloop.runtime import Runtime

_SECRET_CONTEXT = "users.totp_secret"  # noqa: S105 - the column name bound as associated data


def begin_enrolment(rt: Runtime, user: User) -> tuple[str, str]:
    if user.totp_enabled_at is not None:
        raise Conflict("TOTP is already enabled on this account.")
    secret = pyotp.random_base32()
    user.totp_secret = rt.cipher.encrypt(secret, context=_SECRET_CONTEXT)
    label = user.email or user.phone or str(user.id)
    uri = pyotp.TOTP(secret).provisioning_uri(name=label, issuer_name="Referloop")
    return secret, uri


def check_code(rt: Runtime, user: User, code: str) -> bool:
    """True if `code` is valid now (±1 step) and newer than the last accepted one."""
    if not user.totp_secret:
        return False
    totp = pyotp.TOTP(rt.cipher.decrypt(user.totp_secret, context=_SECRET_CONTEXT))
    now = time.time()
    for drift in (0, -1, 1):
        at = now + drift * totp.interval
        if totp.verify(code, for_time=at, valid_window=0):
            step = int(at // totp.interval)
            if user.totp_last_step is not None and step <= user.totp_last_step:
                return False  # replay of an accepted code
            user.totp_last_step = step
            return True
    return False


def confirm_enrolment(rt: Runtime, user: User, code: str) -> bool:
    if user.totp_enabled_at is not None:
        raise Conflict("TOTP is already enabled on this account.")
    if not check_code(rt, user, code):
        return False
    user.totp_enabled_at = utcnow()
    return True


def disable(rt: Runtime, user: User, code: str) -> bool:
    """Turn TOTP off with a current code (the caller checked the password). Staff cannot: their
    routes need it."""
    if user.totp_enabled_at is None:
        raise Conflict("TOTP is not enabled on this account.")
    if user.role != Role.member.value:
        raise Forbidden("Staff accounts keep TOTP: staff routes need it.")
    if not check_code(rt, user, code):
        return False
    user.totp_enabled_at = None
    user.totp_secret = None
    return True


async def rotate_totp_secrets(rt: Runtime, batch: int = BATCH) -> RotationResult:
    """Re-encrypt TOTP secrets not under the primary field key (`referloop keys rotate`), a batch per
    transaction, each row locked (an enrolment meanwhile is re-read, not overwritten)."""
    return await reencrypt_columns(
        rt.db.sessionmaker,
        rt.cipher,
        User,
        {"totp_secret": _SECRET_CONTEXT},
        table="users.totp_secret",
        batch=batch,
    )
