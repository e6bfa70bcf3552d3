from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from referloop.core.deps import ContextDep, ReadSession, WriteSession
from referloop.core.errors import problem_responses
from referloop.core.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page
from referloop.identity.deps import AdminStaff, FinanceStaff, SupportStaff
from referloop.identity.models import KycStatus, Role
from referloop.identity.routes import me_out
from referloop.identity.schemas import KycChange, LevelChange, MeOut, RoleChange
from referloop.identity.service import staff
from referloop.identity.service.accounts import get_user

router = APIRouter(prefix="/v1/staff", tags=["staff: members"], responses=problem_responses(401, 403))


@router.get("/members", response_model=Page[MeOut], responses=problem_responses(422))
async def list_members(
    _: SupportStaff,
    session: ReadSession,
    q: Annotated[
        str | None,
        Query(min_length=1, max_length=254, description="Email or phone prefix, or a referral code"),
    ] = None,
    role: Role | None = None,
    kyc_status: KycStatus | None = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[MeOut]:
    users, next_cursor = await staff.search_members(
        session, q=q, role=role, kyc_status=kyc_status, cursor=cursor, limit=limit
    )
    return Page[MeOut](items=[me_out(u) for u in users], next_cursor=next_cursor)


@router.get("/members/{user_id}", response_model=MeOut, responses=problem_responses(404))
async def get_member(user_id: uuid.UUID, _: SupportStaff, session: ReadSession) -> MeOut:
    return me_out(await get_user(session, user_id))


@router.put("/members/{user_id}/role", response_model=MeOut, responses=problem_responses(404, 409, 422))
async def change_role(
    user_id: uuid.UUID, body: RoleChange, actor: AdminStaff, session: WriteSession, ctx: ContextDep
) -> MeOut:
    """Admins only. Audited; the member's staff access follows at once."""
    return me_out(await staff.change_role(session, actor, user_id, body.role, ctx))


@router.put("/members/{user_id}/kyc-status", response_model=MeOut, responses=problem_responses(404, 422))
async def set_kyc_status(
    user_id: uuid.UUID, body: KycChange, actor: FinanceStaff, session: WriteSession, ctx: ContextDep
) -> MeOut:
    """Finance and admins. Audited. Replaced by the KYC review flow when it lands."""
    return me_out(await staff.set_kyc_status(session, actor, user_id, body.kyc_status, ctx))


@router.put("/members/{user_id}/level", response_model=MeOut, responses=problem_responses(404, 422))
async def set_level(
    user_id: uuid.UUID, body: LevelChange, actor: AdminStaff, session: WriteSession, ctx: ContextDep
) -> MeOut:
    """Admins only. Audited. The member's level (1 and up), which campaigns may require a minimum
    of; set by hand until the engagement issue computes levels. Members cannot change it."""
    return me_out(await staff.set_level(session, actor, user_id, body.level, ctx))
