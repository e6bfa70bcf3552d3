import uuid

from referloop.core.errors import AppError, Conflict, Forbidden, Unauthorized


class AccountExists(Conflict):
    code = "account_exists"
    title = "Account already exists"


class InvalidCredentials(Unauthorized):
    code = "invalid_credentials"
    title = "Invalid credentials"
    keep_changes = True  # the audit row of the failed login stays


class TotpRequired(Unauthorized):
    code = "totp_required"
    title = "TOTP code required"
    keep_changes = True


class InvalidToken(Unauthorized):
    code = "invalid_token"
    title = "Invalid or expired token"


SESSION_ENDED = "This session has ended; sign in again."


class RefreshTokenReused(Unauthorized):
    code = "refresh_token_reused"
    title = "Refresh token reused"
    keep_changes = True  # the family stays revoked


class WrongPassword(Forbidden):
    """The current password given to confirm a change is wrong. Not a 401: the caller's token is
    fine, and clients treat 401 as "sign in again"."""

    code = "wrong_password"
    title = "Wrong password"
    keep_changes = True  # the audit row of the failed attempt stays


class StaffMfaRequired(Forbidden):
    code = "staff_totp_required"
    title = "Staff must sign in with TOTP"


class InsufficientRole(Forbidden):
    code = "insufficient_role"
    title = "Your role does not allow this"


class OwnCase(Forbidden):
    """Staff act on other people's money and status, never their own: a second person decides."""

    code = "own_case"
    title = "Another staff member must do this"


def refuse_own_case(actor_id: uuid.UUID | None, subject_member_id: uuid.UUID, what: str) -> None:
    """Raise OwnCase when a staff member would act on their own account (`what`: "approve your own
    withdrawal", ...)."""
    if actor_id is not None and actor_id == subject_member_id:
        raise OwnCase(f"You cannot {what}; ask another staff member.")


class CodeRejected(AppError):
    status_code = 400
    code = "code_rejected"
    title = "Code rejected"
    keep_changes = True  # the attempt counter stays incremented


class WeakPassword(AppError):
    status_code = 422
    code = "weak_password"
    title = "Password refused"


class NothingToVerify(AppError):
    status_code = 409
    code = "nothing_to_verify"
    title = "Nothing to verify"
