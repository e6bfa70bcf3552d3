"""Who is calling: typed dependencies, so a route's signature says who may call it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select

from referloop.core.deps import ReadSession, runtime_of
from referloop.core.security.tokens import AccessClaims
from referloop.core.security.tokens import InvalidToken as BadJwt
from referloop.identity.errors import SESSION_ENDED, InsufficientRole, InvalidToken, StaffMfaRequired
from referloop.identity.models import Role, User
from referloop.identity.service.sessions import Principal, is_session_revoked


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise InvalidToken("Send an access token as `Authorization: Bearer <token>`.")
    return token.strip()


def _verified_claims(request: Request) -> AccessClaims:
    try:
        return runtime_of(request).signer.verify(_bearer(request))
    except BadJwt as exc:
        raise InvalidToken("The access token is invalid or expired.") from exc


async def current_principal(request: Request) -> Principal:
    claims = _verified_claims(request)
    if await is_session_revoked(runtime_of(request), claims.session_id):
        raise InvalidToken(SESSION_ENDED)
    return Principal(user_id=claims.user_id, session_id=claims.session_id, role=claims.role, mfa=claims.mfa)


async def session_unchecked_principal(request: Request) -> Principal:
    """A valid access token whose session is NOT yet checked for revocation. Only for a route whose
    own query checks the session (as `accounts.get_own_profile` does), which saves the Redis round trip of
    `current_principal`; tests/identity/test_deps.py lists the routes allowed to take it."""
    claims = _verified_claims(request)
    return Principal(user_id=claims.user_id, session_id=claims.session_id, role=claims.role, mfa=claims.mfa)


CurrentMember = Annotated[Principal, Depends(current_principal)]
SessionUncheckedMember = Annotated[Principal, Depends(session_unchecked_principal)]


def require_staff(*roles: Role) -> Callable[..., Awaitable[Principal]]:
    """Staff routes: the role is re-read from the database (a demoted admin loses access at once),
    and the session must have been opened with a TOTP code."""
    allowed = {r.value for r in roles} | {Role.admin.value}

    async def dependency(principal: CurrentMember, session: ReadSession) -> Principal:
        role = await session.scalar(
            select(User.role).where(User.id == principal.user_id, User.deleted_at.is_(None))
        )
        if role is None or role == Role.member.value:
            raise InsufficientRole("This route is for staff.")
        if not principal.mfa:
            raise StaffMfaRequired("Enrol TOTP and sign in with a code to use staff routes.")
        if role not in allowed:
            raise InsufficientRole(f"This route needs one of the roles: {', '.join(sorted(allowed))}.")
        return Principal(user_id=principal.user_id, session_id=principal.session_id, role=role, mfa=True)

    return dependency


SupportStaff = Annotated[Principal, Depends(require_staff(Role.support, Role.finance))]
FinanceStaff = Annotated[Principal, Depends(require_staff(Role.finance))]
AdminStaff = Annotated[Principal, Depends(require_staff())]
