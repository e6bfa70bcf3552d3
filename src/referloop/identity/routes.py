from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Request, Response, status

from referloop.core.deps import ContextDep, ReadSession, RuntimeDep, WriteSession, rate_limit_ip
from referloop.core.errors import NotFound, problem_responses
from referloop.identity.deps import CurrentMember, SessionUncheckedMember
from referloop.identity.errors import CodeRejected
from referloop.identity.models import User
from referloop.identity.schemas import (
    Accepted,
    CodeConfirm,
    LoginRequest,
    MeOut,
    MeUpdate,
    PasswordChangeRequest,
    PasswordForgotRequest,
    PasswordResetRequest,
    RefreshRequest,
    RegisterRequest,
    SessionList,
    SessionOut,
    TokenPair,
    TotpDisableRequest,
    TotpEnrollOut,
    TotpEnrollRequest,
)
from referloop.identity.service import accounts, sessions, totp

router = APIRouter(prefix="/v1", tags=["identity"])


def me_out(user: User) -> MeOut:
    return MeOut.model_validate(
        {
            **{
                c: getattr(user, c)
                for c in (
                    "id",
                    "email",
                    "phone",
                    "display_name",
                    "role",
                    "referral_code",
                    "locale",
                    "country",
                    "timezone",
                    "preferred_currency",
                    "kyc_status",
                    "level",
                    "created_at",
                )
            },
            "email_verified": user.email_verified_at is not None,
            "phone_verified": user.phone_verified_at is not None,
            "totp_enabled": user.totp_enabled_at is not None,
        }
    )


@router.post(
    "/auth/register",
    status_code=status.HTTP_201_CREATED,
    response_model=TokenPair,
    responses=problem_responses(409, 422, 429),
)
async def register(
    body: RegisterRequest,
    request: Request,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
    device_id: Annotated[
        str | None, Header(alias="X-Device-ID", max_length=200, description="The app's install id.")
    ] = None,
) -> TokenPair:
    """Create a member account and sign in. A code to verify the email address is sent at once.
    A share link's click id (`click_id`, else the `rl_click` cookie) credits the member who shared it."""
    await rt.limiter.hit(rt.settings.rate_limit_register, "register", rate_limit_ip(ctx.ip))
    await rt.limiter.hit(rt.settings.rate_limit_register, "register-account", body.email or body.phone or "-")
    cookie = request.cookies.get(rt.settings.click_cookie_name)
    return await accounts.register(
        session, rt, body, ctx, click_id=cookie[:64] if cookie else None, device_id=device_id
    )


@router.post("/auth/login", response_model=TokenPair, responses=problem_responses(401, 422, 429))
async def login(body: LoginRequest, session: WriteSession, rt: RuntimeDep, ctx: ContextDep) -> TokenPair:
    """Sign in with email or phone and password (and a TOTP code where TOTP is enabled)."""
    await rt.limiter.hit(rt.settings.rate_limit_login, "login-ip", rate_limit_ip(ctx.ip))
    await rt.limiter.hit(rt.settings.rate_limit_login, "login-account", accounts.login_key(body.login))
    return await accounts.login(session, rt, body, ctx)


@router.post("/auth/refresh", response_model=TokenPair, responses=problem_responses(401, 422, 429))
async def refresh(body: RefreshRequest, session: WriteSession, rt: RuntimeDep, ctx: ContextDep) -> TokenPair:
    """Exchange a refresh token for a new pair. Each refresh token works once; presenting a used one
    again (after a 10-second grace for retries) ends the whole session."""
    await rt.limiter.hit(rt.settings.rate_limit_refresh, "refresh-ip", rate_limit_ip(ctx.ip))
    return await sessions.refresh(session, rt, body.refresh_token, ctx)


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT, responses=problem_responses(401))
async def logout(principal: CurrentMember, session: WriteSession, rt: RuntimeDep) -> None:
    """End the current session: its refresh token and access tokens stop working."""
    await sessions.revoke_session(session, rt, principal.session_id, reason="logout")


@router.get("/auth/sessions", response_model=SessionList, responses=problem_responses(401))
async def list_sessions(principal: CurrentMember, session: ReadSession) -> SessionList:
    rows = await sessions.list_sessions(session, principal.user_id)
    return SessionList(
        items=[
            SessionOut(
                id=s.id,
                device_name=s.device_name,
                ip=s.ip,
                user_agent=s.user_agent,
                created_at=s.created_at,
                last_used_at=s.last_used_at,
                current=s.id == principal.session_id,
            )
            for s in rows
        ]
    )


@router.delete(
    "/auth/sessions/{session_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(401, 404),
)
async def end_session(
    session_id: uuid.UUID, principal: CurrentMember, session: WriteSession, rt: RuntimeDep
) -> None:
    """Sign out one of your devices."""
    owned = {s.id for s in await sessions.list_sessions(session, principal.user_id)}
    if session_id not in owned:
        raise NotFound("No such session.")
    await sessions.revoke_session(session, rt, session_id, reason="ended_by_member")


@router.post(
    "/auth/verify/{channel}/request",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    responses=problem_responses(401, 409, 429, 503),
)
async def request_verification(
    channel: Literal["email", "phone"],
    principal: CurrentMember,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
) -> Accepted:
    """Send a new 6-digit code to your email address or phone (valid 10 minutes, 5 attempts)."""
    await rt.limiter.hit(rt.settings.rate_limit_verify, "verify-ip", rate_limit_ip(ctx.ip))
    await rt.limiter.hit(rt.settings.rate_limit_verify, "verify-account", str(principal.user_id))
    await accounts.request_verification(session, rt, principal.user_id, channel)
    return Accepted(detail=f"A code is on its way to your {channel}.")


@router.post(
    "/auth/verify/{channel}/confirm", response_model=MeOut, responses=problem_responses(400, 401, 409, 429)
)
async def confirm_verification(
    channel: Literal["email", "phone"],
    body: CodeConfirm,
    principal: CurrentMember,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
) -> MeOut:
    await rt.limiter.hit(rt.settings.rate_limit_verify, "verify-ip", rate_limit_ip(ctx.ip))
    await rt.limiter.hit(rt.settings.rate_limit_verify, "verify-account", str(principal.user_id))
    await rt.limiter.hit(
        rt.settings.rate_limit_code_guesses, f"code-guesses-{channel}", str(principal.user_id)
    )
    return me_out(
        await accounts.confirm_verification(session, rt, principal.user_id, channel, body.code, ctx)
    )


@router.post(
    "/auth/password/forgot",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    responses=problem_responses(422, 429),
)
async def forgot_password(
    body: PasswordForgotRequest, session: WriteSession, rt: RuntimeDep, ctx: ContextDep
) -> Accepted:
    """Email a reset code if an account has this address. The answer is the same either way."""
    await rt.limiter.hit(rt.settings.rate_limit_verify, "reset-ip", rate_limit_ip(ctx.ip))
    await rt.limiter.hit(rt.settings.rate_limit_verify, "reset-account", body.email)
    await accounts.request_password_reset(session, rt, body.email)
    return Accepted(detail="If an account has this address, a code is on its way.")


@router.post(
    "/auth/password/reset", status_code=status.HTTP_204_NO_CONTENT, responses=problem_responses(400, 422, 429)
)
async def reset_password(
    body: PasswordResetRequest, session: WriteSession, rt: RuntimeDep, ctx: ContextDep
) -> None:
    """Set a new password with the emailed code; every session of the account is signed out."""
    await rt.limiter.hit(rt.settings.rate_limit_verify, "reset-ip", rate_limit_ip(ctx.ip))
    await rt.limiter.hit(rt.settings.rate_limit_verify, "reset-account", body.email)
    # 5 tries per code, and a new code is one request away: this caps the guesses themselves.
    await rt.limiter.hit(rt.settings.rate_limit_code_guesses, "code-guesses-reset", body.email)
    await accounts.reset_password(session, rt, body.email, body.code, body.new_password, ctx)


@router.post(
    "/auth/password/change",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(401, 403, 422, 429),
)
async def change_password(
    body: PasswordChangeRequest,
    principal: CurrentMember,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
) -> None:
    """Change your password; every other session is signed out. A wrong current password is 403."""
    # A stolen access token must not become a way to guess the password.
    await rt.limiter.hit(rt.settings.rate_limit_verify, "password-account", str(principal.user_id))
    await accounts.change_password(session, rt, principal, body.current_password, body.new_password, ctx)


@router.post(
    "/auth/totp/enroll", response_model=TotpEnrollOut, responses=problem_responses(401, 403, 409, 429)
)
async def totp_enroll(
    body: TotpEnrollRequest, principal: CurrentMember, session: WriteSession, rt: RuntimeDep, ctx: ContextDep
) -> TotpEnrollOut:
    """Start TOTP enrolment, confirmed by your current password (403 `wrong_password`): add the
    secret to an authenticator app, then confirm with a code."""
    await rt.limiter.hit(rt.settings.rate_limit_verify, "password-account", str(principal.user_id))
    user = await accounts.get_user(session, principal.user_id)
    await accounts.require_password(
        session, rt, user, body.password, ctx, failed_action="auth.totp_enroll_failed"
    )
    secret, uri = totp.begin_enrolment(rt, user)
    return TotpEnrollOut(secret=secret, otpauth_uri=uri)


@router.post("/auth/totp/disable", response_model=MeOut, responses=problem_responses(400, 401, 403, 409, 429))
async def totp_disable(
    body: TotpDisableRequest, principal: CurrentMember, session: WriteSession, rt: RuntimeDep, ctx: ContextDep
) -> MeOut:
    """Turn TOTP off with your current password and a code from the app (members; staff keep it).
    Lost the app? Contact support."""
    from referloop.compliance import audit

    await rt.limiter.hit(rt.settings.rate_limit_verify, "password-account", str(principal.user_id))
    user = await accounts.get_user(session, principal.user_id, for_update=True)
    await accounts.require_password(
        session, rt, user, body.password, ctx, failed_action="auth.totp_disable_failed"
    )
    if not totp.disable(rt, user, body.code):
        raise CodeRejected("Wrong code; check the clock of your authenticator app.")
    await audit.record(
        session, action="auth.totp_disabled", actor_id=user.id, target_type="user", target_id=user.id, ctx=ctx
    )
    return me_out(user)


@router.post("/auth/totp/confirm", response_model=MeOut, responses=problem_responses(400, 401, 409, 429))
async def totp_confirm(
    body: CodeConfirm,
    principal: CurrentMember,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
) -> MeOut:
    from referloop.compliance import audit

    await rt.limiter.hit(rt.settings.rate_limit_verify, "totp-account", str(principal.user_id))
    user = await accounts.get_user(session, principal.user_id, for_update=True)
    if not totp.confirm_enrolment(rt, user, body.code):
        raise CodeRejected("Wrong code; check the clock of your authenticator app.")
    await audit.record(
        session, action="auth.totp_enabled", actor_id=user.id, target_type="user", target_id=user.id, ctx=ctx
    )
    return me_out(user)


@router.get("/me", response_model=MeOut, responses=problem_responses(401, 404))
async def get_me(principal: SessionUncheckedMember, rt: RuntimeDep) -> Response:
    """Your profile: contact details and their verification, role, referral code, preferences, KYC
    status and level."""
    # The dependency leaves the session's revocation to the profile's own query: one round trip.
    profile = await accounts.get_own_profile(rt.db, principal.user_id, principal.session_id)
    # Validated once here and sent as is: FastAPI would validate and serialize the model again.
    me = MeOut.model_validate(profile)
    return Response(me.model_dump_json(), media_type="application/json")


@router.patch("/me", response_model=MeOut, responses=problem_responses(401, 404, 422))
async def patch_me(body: MeUpdate, principal: CurrentMember, session: WriteSession) -> MeOut:
    """Change your display name, locale, country, time zone or preferred currency. Other fields
    (role, verification, balances, referral code) are refused with 422."""
    return me_out(await accounts.update_profile(session, principal.user_id, body))
