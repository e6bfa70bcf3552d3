"""Which disputed things a member owns. Each domain registers a check for its subject type, so
this package never reads another domain's tables."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession

from referloop.disputes.models import SubjectType

OwnershipCheck = Callable[[AsyncSession, uuid.UUID, uuid.UUID], Awaitable[bool]]

_checks: dict[SubjectType, OwnershipCheck] = {}


def register_subject(subject_type: SubjectType, check: OwnershipCheck) -> None:
    _checks[subject_type] = check


async def member_owns(
    session: AsyncSession, subject_type: SubjectType, member_id: uuid.UUID, subject_id: uuid.UUID
) -> bool:
    check = _checks.get(subject_type)
    return check is not None and await check(session, member_id, subject_id)
