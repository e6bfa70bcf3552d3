"""Accounts: registration, sign-in, passwords, verification and the member's own profile."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.compliance import audit
from referloop.core.context import RequestContext
from referloop.core.db import Database, utcnow
from referloop.core.errors import NotFound
from referloop.core.ids import uuid7
from referloop.core.outbox import enqueue
from referloop.core.security.passwords import password_problem
from referloop.core.validation import normalize_email, normalize_phone
from referloop.identity.errors import (
    SESSION_ENDED,
    AccountExists,
    CodeRejected,
    InvalidCredentials,
    InvalidToken,
    NothingToVerify,
    TotpRequired,
    WeakPassword,
    WrongPassword,
)
from referloop.identity.models import CodePurpose, Role, User
from referloop.identity.schemas import LoginRequest, MeUpdate, RegisterRequest, TokenPair
from referloop.identity.service import codes, sessions, totp
from referloop.identity.service.login_throttle import LoginThrottle
from referloop.identity.service.referral_codes import new_referral_code, normalize_referral_code
from referloop.runtime import Runtime

_REFERRAL_CODE_ATTEMPTS = 5


def _check_password(password: str) -> None:
    problem = password_problem(password)
    if problem:
        raise WeakPassword(problem)


async def create_user(
    session: AsyncSession,
    rt: Runtime,
    *,
    email: str | None,
    phone: str | None,
    password: str,
    display_name: str,
    role: Role = Role.member,
    invited_with_code: str | None = None,
) -> User:
    _check_password(password)
    password_hash = await rt.passwords.hash(password)
    for _ in range(_REFERRAL_CODE_ATTEMPTS):
        user = User(
            id=uuid7(),
            email=email,
            phone=phone,
            password_hash=password_hash,
            display_name=display_name,
            role=role.value,
            referral_code=new_referral_code(),
            invited_with_code=invited_with_code,
        )
        try:
            async with session.begin_nested():
                session.add(user)
                await session.flush()
            return user
        except IntegrityError as exc:
            constraint = getattr(getattr(exc.orig, "__cause__", None), "constraint_name", "") or str(exc.orig)
            if "referral_code" in constraint:
                continue  # 1 in 2^40 per existing member: draw again
            raise AccountExists("An account with these details already exists.") from exc
    raise RuntimeError("could not draw a unique referral code")


async def register(
    session: AsyncSession,
    rt: Runtime,
    data: RegisterRequest,
    ctx: RequestContext,
    *,
    click_id: str | None = None,
    device_id: str | None = None,
) -> TokenPair:
    """`click_id` and `device_id` (the share-link cookie and the `X-Device-ID` header) are used
    when the body does not carry them; referrals attributes the sign-up with them."""
    taken = [User.email == data.email] if data.email else []
    if data.phone:
        taken.append(User.phone == data.phone)
    existing = await session.scalar(select(User.id).where(User.deleted_at.is_(None), or_(*taken)).limit(1))
    if existing is not None:
        # Same answer whichever of email or phone is taken: the API does not confirm who has an account.
        raise AccountExists("An account with these details already exists.")
    invited = normalize_referral_code(data.referral_code) if data.referral_code else None
    user = await create_user(
        session,
        rt,
        email=data.email,
        phone=data.phone,
        password=data.password,
        display_name=data.display_name,
        invited_with_code=invited,
    )
    await audit.record(
        session,
        action="auth.register",
        actor_id=user.id,
        target_type="user",
        target_id=user.id,
        after={"email": user.email, "phone": user.phone, "invited_with_code": invited},
        ctx=ctx,
    )
    await enqueue(
        session,
        "identity.user_registered",
        {
            "user_id": str(user.id),
            "invited_with_code": invited,
            "referral_code": user.referral_code,
            "click_id": data.click_id or click_id,
            "device_id": data.device_id or device_id,
        },
    )
    if user.email:
        await codes.issue_code(session, rt, user, CodePurpose.verify_email, user.email)
    return await sessions.start_session(session, rt, user, ctx, mfa=False, device_name=data.device_name)


def _login_lookup(login: str) -> tuple[str, str] | None:
    """('email', value) or ('phone', value), normalized; None if it is neither."""
    try:
        return ("email", normalize_email(login)) if "@" in login else ("phone", normalize_phone(login))
    except ValueError:
        return None


def login_key(login: str) -> str:
    """The account a login names, for per-account limits: one key however the address is written."""
    lookup = _login_lookup(login)
    return lookup[1] if lookup else login.strip().lower()


async def login(session: AsyncSession, rt: Runtime, data: LoginRequest, ctx: RequestContext) -> TokenPair:
    lookup = _login_lookup(data.login)
    throttle = LoginThrottle(rt, login_key(data.login))
    await throttle.check()
    user = None
    if lookup:
        column = User.email if lookup[0] == "email" else User.phone
        user = await session.scalar(select(User).where(column == lookup[1], User.deleted_at.is_(None)))
    ok = await rt.passwords.verify(user.password_hash if user else None, data.password)
    if not ok or user is None:
        await throttle.failed()
        await audit.record(
            session,
            action="auth.login_failed",
            actor_id=user.id if user else None,
            target_type="user" if user else None,
            target_id=user.id if user else None,
            after={"reason": "bad_password" if user else "unknown_account"},
            ctx=ctx,
        )
        raise InvalidCredentials("The login or password is wrong.")
    mfa = False
    if user.totp_enabled_at is not None:
        if not data.totp_code:
            raise TotpRequired("Enter the 6-digit code from your authenticator app.")
        # Lock the row and re-read the last accepted step: two sign-ins racing with one code must
        # not both pass the replay check (the second waits here and then sees the first one's step).
        await session.refresh(user, with_for_update=True)
        if not totp.check_code(rt, user, data.totp_code):
            await throttle.failed()
            await audit.record(
                session,
                action="auth.login_failed",
                actor_id=user.id,
                target_type="user",
                target_id=user.id,
                after={"reason": "bad_totp"},
                ctx=ctx,
            )
            raise InvalidCredentials("The TOTP code is wrong or was already used.")
        mfa = True
    await throttle.succeeded()
    if rt.passwords.needs_rehash(user.password_hash):
        user.password_hash = await rt.passwords.hash(data.password)
    await audit.record(
        session,
        action="auth.login",
        actor_id=user.id,
        target_type="user",
        target_id=user.id,
        after={"mfa": mfa},
        ctx=ctx,
    )
    return await sessions.start_session(session, rt, user, ctx, mfa=mfa, device_name=data.device_name)


# What a member sees of their own account (GET /v1/me), read in one statement without the ORM: the
# route every app screen calls first (bench/identity.py measures it).
# The caller's session is checked here, in the profile's own statement, rather than by a separate
# Redis round trip in the route's dependency: /v1/me is the hottest authenticated read.
_OWN_PROFILE = """
SELECT s.revoked_at IS NULL AS session_live, u.id, u.email, u.phone, u.display_name, u.role,
       u.referral_code, u.locale, u.country, u.timezone, u.preferred_currency, u.kyc_status, u.level,
       u.created_at, u.email_verified_at IS NOT NULL AS email_verified,
       u.phone_verified_at IS NOT NULL AS phone_verified, u.totp_enabled_at IS NOT NULL AS totp_enabled
FROM auth_sessions s LEFT JOIN users u ON u.id = s.user_id AND u.deleted_at IS NULL
WHERE s.id = $2 AND s.user_id = $1
"""


async def get_own_profile(db: Database, user_id: uuid.UUID, session_id: uuid.UUID) -> dict[str, Any]:
    """The member's own profile fields (those of MeOut), read through the caller's session:
    InvalidToken once that session is revoked, NotFound for a deleted account."""
    async with db.read_connection() as conn:
        row = await conn.fetchrow(_OWN_PROFILE, user_id, session_id)
    if row is None or not row["session_live"]:
        raise InvalidToken(SESSION_ENDED)
    if row["id"] is None:
        raise NotFound("No such account.")
    profile = dict(row)
    del profile["session_live"]
    return profile


async def get_user(session: AsyncSession, user_id: uuid.UUID, *, for_update: bool = False) -> User:
    user = await session.get(User, user_id, with_for_update=for_update or None, populate_existing=for_update)
    if user is None or user.deleted_at is not None:
        raise NotFound("No such account.")
    return user


async def _set_password(
    session: AsyncSession,
    rt: Runtime,
    user: User,
    new_password: str,
    ctx: RequestContext,
    *,
    keep_session: uuid.UUID | None,
    action: str,
) -> None:
    _check_password(new_password)
    user.password_hash = await rt.passwords.hash(new_password)
    user.password_changed_at = utcnow()
    revoked = await sessions.revoke_all_sessions(
        session, rt, user.id, reason="password_changed", keep=keep_session
    )
    await audit.record(
        session,
        action=action,
        actor_id=user.id,
        target_type="user",
        target_id=user.id,
        after={"sessions_revoked": revoked},
        ctx=ctx,
    )


async def require_password(
    session: AsyncSession, rt: Runtime, user: User, password: str, ctx: RequestContext, *, failed_action: str
) -> None:
    """The signed-in member confirms a sensitive change with their current password; a wrong one is
    audited (`failed_action`) and raises WrongPassword (403)."""
    if not await rt.passwords.verify(user.password_hash, password):
        await audit.record(
            session, action=failed_action, actor_id=user.id, target_type="user", target_id=user.id, ctx=ctx
        )
        raise WrongPassword("The current password is wrong.")


async def change_password(
    session: AsyncSession,
    rt: Runtime,
    principal: sessions.Principal,
    current: str,
    new: str,
    ctx: RequestContext,
) -> None:
    user = await get_user(session, principal.user_id)
    await require_password(session, rt, user, current, ctx, failed_action="auth.password_change_failed")
    await _set_password(
        session, rt, user, new, ctx, keep_session=principal.session_id, action="auth.password_changed"
    )


async def request_password_reset(session: AsyncSession, rt: Runtime, email: str) -> None:
    user = await session.scalar(select(User).where(User.email == email, User.deleted_at.is_(None)))
    if user is not None:  # the answer is the same either way
        await codes.issue_code(session, rt, user, CodePurpose.reset_password, email)


async def reset_password(
    session: AsyncSession, rt: Runtime, email: str, code: str, new_password: str, ctx: RequestContext
) -> None:
    user = await session.scalar(select(User).where(User.email == email, User.deleted_at.is_(None)))
    if user is None:
        raise CodeRejected("No code is waiting; request a new one.")
    _check_password(new_password)  # before the code is spent, so a weak choice costs no code
    await codes.consume_code(session, rt, user, CodePurpose.reset_password, code, email)
    await _set_password(session, rt, user, new_password, ctx, keep_session=None, action="auth.password_reset")


async def request_verification(session: AsyncSession, rt: Runtime, user_id: uuid.UUID, channel: str) -> None:
    user = await get_user(session, user_id)
    if channel == "email":
        if not user.email or user.email_verified_at:
            raise NothingToVerify("There is no unverified email address on this account.")
        await codes.issue_code(session, rt, user, CodePurpose.verify_email, user.email)
    else:
        if not user.phone or user.phone_verified_at:
            raise NothingToVerify("There is no unverified phone number on this account.")
        await codes.issue_code(session, rt, user, CodePurpose.verify_phone, user.phone)


async def confirm_verification(
    session: AsyncSession, rt: Runtime, user_id: uuid.UUID, channel: str, code: str, ctx: RequestContext
) -> User:
    user = await get_user(session, user_id)
    if channel == "email":
        if not user.email or user.email_verified_at:
            raise NothingToVerify("There is no unverified email address on this account.")
        await codes.consume_code(session, rt, user, CodePurpose.verify_email, code, user.email)
        user.email_verified_at = utcnow()
    else:
        if not user.phone or user.phone_verified_at:
            raise NothingToVerify("There is no unverified phone number on this account.")
        await codes.consume_code(session, rt, user, CodePurpose.verify_phone, code, user.phone)
        user.phone_verified_at = utcnow()
    await audit.record(
        session,
        action=f"auth.{channel}_verified",
        actor_id=user.id,
        target_type="user",
        target_id=user.id,
        ctx=ctx,
    )
    return user


async def update_profile(session: AsyncSession, user_id: uuid.UUID, changes: MeUpdate) -> User:
    user = await get_user(session, user_id)
    # Only fields that were sent; the schema refuses `null` for the ones that cannot be cleared.
    for field, value in changes.model_dump(exclude_unset=True).items():
        setattr(user, field, value)
    await session.flush()
    return user


def profile_snapshot(user: User) -> dict[str, Any]:
    return {"role": user.role, "kyc_status": user.kyc_status}
