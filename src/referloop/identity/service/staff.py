"""What staff do to member accounts: search, change roles, set KYC status (until the KYC issue),
set the member level (until the engagement issue computes it)."""

from __future__ import annotations

import uuid

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.compliance import audit
from referloop.core.context import RequestContext
from referloop.core.db import lock_by_name
from referloop.core.errors import Conflict
from referloop.core.pagination import paginate_by_id_desc, split_page
from referloop.identity.errors import InsufficientRole, refuse_own_case
from referloop.identity.models import KycStatus, Role, User
from referloop.identity.service.accounts import get_user
from referloop.identity.service.referral_codes import normalize_referral_code
from referloop.identity.service.sessions import Principal


async def search_members(
    session: AsyncSession,
    *,
    q: str | None,
    role: Role | None,
    kyc_status: KycStatus | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[User], str | None]:
    stmt = select(User).where(User.deleted_at.is_(None))
    if q:
        pattern = q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        stmt = stmt.where(
            or_(
                User.email.like(pattern),
                User.phone.like(pattern),
                User.referral_code == normalize_referral_code(q),
            )
        )
    if role:
        stmt = stmt.where(User.role == role.value)
    if kyc_status:
        stmt = stmt.where(User.kyc_status == kyc_status.value)
    rows = list((await session.scalars(paginate_by_id_desc(stmt, User.id, cursor, limit))).all())
    return split_page(rows, limit, lambda u: [u.id])


class LastAdmin(Conflict):
    code = "last_admin"
    title = "The last admin cannot be removed"


# Every role change takes this lock first: the last-admin check below then sees every earlier
# change, so two admins demoting each other at once cannot leave none.
_ROLES_LOCK = "identity:roles"


async def change_role(
    session: AsyncSession, actor: Principal, user_id: uuid.UUID, role: Role, ctx: RequestContext
) -> User:
    if user_id == actor.user_id:
        raise Conflict("You cannot change your own role; ask another admin.")
    await lock_by_name(session, _ROLES_LOCK)
    user = await get_user(session, user_id, for_update=True)
    if user.role == Role.admin.value and role is not Role.admin:
        other_admins = await session.scalar(
            select(func.count()).where(
                User.role == Role.admin.value, User.deleted_at.is_(None), User.id != user.id
            )
        )
        if not other_admins:
            raise LastAdmin("This is the last admin; make another admin first.")
    # The actor's role was read before the lock: an admin demoted meanwhile acts no more.
    actor_role = await session.scalar(
        select(User.role).where(User.id == actor.user_id, User.deleted_at.is_(None))
    )
    if actor_role != Role.admin.value:
        raise InsufficientRole("Only admins change roles.")
    before = user.role
    user.role = role.value
    await audit.record(
        session,
        action="staff.role_changed",
        actor_id=actor.user_id,
        actor_type="staff",
        target_type="user",
        target_id=user.id,
        before={"role": before},
        after={"role": role.value},
        ctx=ctx,
    )
    await session.flush()
    return user


async def set_kyc_status(
    session: AsyncSession, actor: Principal, user_id: uuid.UUID, kyc_status: KycStatus, ctx: RequestContext
) -> User:
    refuse_own_case(actor.user_id, user_id, "set your own KYC status")
    user = await get_user(session, user_id, for_update=True)
    before = user.kyc_status
    user.kyc_status = kyc_status.value
    await audit.record(
        session,
        action="staff.kyc_status_changed",
        actor_id=actor.user_id,
        actor_type="staff",
        target_type="user",
        target_id=user.id,
        before={"kyc_status": before},
        after={"kyc_status": kyc_status.value},
        ctx=ctx,
    )
    await session.flush()
    return user


async def set_level(
    session: AsyncSession, actor: Principal, user_id: uuid.UUID, level: int, ctx: RequestContext
) -> User:
    refuse_own_case(actor.user_id, user_id, "set your own level")
    user = await get_user(session, user_id, for_update=True)
    before = user.level
    user.level = level
    await audit.record(
        session,
        action="staff.level_changed",
        actor_id=actor.user_id,
        actor_type="staff",
        target_type="user",
        target_id=user.id,
        before={"level": before},
        after={"level": level},
        ctx=ctx,
    )
    await session.flush()
    return user
