"""Errors of the referral lifecycle; each renders as problem+json with a stable code."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from referloop.core.errors import AppError, Conflict, NotFound


class ReferralNotFound(NotFound):
    code = "referral_not_found"
    title = "Referral not found"


class IllegalReferralTransition(Conflict):
    code = "illegal_transition"
    title = "Illegal state transition"

    def __init__(self, current: str, wanted: str, allowed: Iterable[str], **extra: Any) -> None:
        allowed_list = sorted(allowed)
        names = ", ".join(allowed_list) if allowed_list else "none (the state is final)"
        super().__init__(
            f"A referral in state {current!r} cannot move to {wanted!r}; allowed: {names}.",
            current_state=current,
            allowed=allowed_list,
            **extra,
        )


class DuplicateLead(Conflict):
    code = "duplicate_lead"
    title = "Already invited"


class SelfReferralRefused(AppError):
    status_code = 422
    code = "self_referral"
    title = "You cannot refer yourself"
