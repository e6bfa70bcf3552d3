"""Errors of the referrals domain; each renders as problem+json with a stable code."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from referloop.core.errors import AppError, Conflict, NotFound


class UniversityNotFound(NotFound):
    code = "university_not_found"
    title = "University not found"


class ProgramNotFound(NotFound):
    code = "program_not_found"
    title = "Program not found"


class CampaignNotFound(NotFound):
    code = "campaign_not_found"
    title = "Campaign not found"


class LinkNotFound(NotFound):
    code = "link_not_found"
    title = "Link not found"


class VanityCodeNotFound(NotFound):
    code = "vanity_code_not_found"
    title = "Vanity code not found"


class SlugTaken(Conflict):
    code = "slug_taken"
    title = "Slug already in use"


class IllegalCampaignTransition(Conflict):
    code = "illegal_transition"
    title = "Illegal state transition"

    def __init__(self, current: str, wanted: str, allowed: Iterable[str], **extra: Any) -> None:
        allowed_list = sorted(allowed)
        names = ", ".join(allowed_list) if allowed_list else "none (the state is final)"
        super().__init__(
            f"A campaign in state {current!r} cannot move to {wanted!r}; allowed: {names}.",
            current_state=current,
            allowed=allowed_list,
            **extra,
        )


class CampaignEnded(Conflict):
    code = "campaign_ended"
    title = "Campaign has ended"


class VanityCodeTaken(Conflict):
    code = "vanity_code_taken"
    title = "Vanity code taken"


class VanityCodeRefused(AppError):
    status_code = 422
    code = "vanity_code_refused"
    title = "Vanity code refused"
