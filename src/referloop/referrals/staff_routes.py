"""Staff (admin) routes: universities, programs, campaigns and vanity codes. Every write is audited."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, status
from fastapi.responses import JSONResponse

from referloop.core.deps import ContextDep, ReadSession, RuntimeDep, WriteSession
from referloop.core.errors import problem_responses
from referloop.core.idempotency import (
    idempotency_key_header,
    run_idempotent_for,
)
from referloop.core.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page
from referloop.identity.deps import AdminStaff
from referloop.referrals.models import Campaign, CampaignState, Program, University
from referloop.referrals.routes import program_out, vanity_out
from referloop.referrals.schemas import (
    CampaignCreate,
    CampaignOut,
    CampaignStateChange,
    CampaignUpdate,
    ProgramCreate,
    ProgramUpdate,
    StaffProgramOut,
    UniversityCreate,
    UniversityOut,
    UniversityUpdate,
    VanityCodeOut,
    VanityRevoke,
)
from referloop.referrals.service import campaigns, catalogue, codes

router = APIRouter(prefix="/v1/staff", tags=["staff: referrals"], responses=problem_responses(401, 403))

Cursor = Annotated[str | None, Query(max_length=300, pattern=r"^[A-Za-z0-9_-]+$")]
IdempotencyKey = Annotated[str, Depends(idempotency_key_header)]


Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]


def university_out(u: University) -> UniversityOut:
    return UniversityOut(
        id=u.id,
        name=u.name,
        slug=u.slug,
        country=u.country,
        website_url=u.website_url,
        description=u.description,
        active=u.active,
        retired=u.deleted_at is not None,
        created_at=u.created_at,
        updated_at=u.updated_at,
    )


def staff_program_out(p: Program, u: University) -> StaffProgramOut:
    return StaffProgramOut(**program_out(p, u).model_dump(), retired=p.deleted_at is not None)


def campaign_out(c: Campaign, program_ids: list[uuid.UUID]) -> CampaignOut:
    return CampaignOut(
        id=c.id,
        name=c.name,
        description=c.description,
        state=CampaignState(c.state),
        allowed_transitions=campaigns.allowed_transitions(c.state),
        priority=c.priority,
        starts_at=c.starts_at,
        ends_at=c.ends_at,
        program_ids=program_ids,
        currency=c.currency,
        **campaigns.budget_view(c),
        attribution_window_days=c.attribution_window_days,
        activated_at=c.activated_at,
        ended_at=c.ended_at,
        created_at=c.created_at,
        updated_at=c.updated_at,
    )


# -- universities ---------------------------------------------------------------------------------


@router.get("/universities", response_model=Page[UniversityOut], responses=problem_responses(422))
async def list_universities(
    _: AdminStaff,
    session: ReadSession,
    include_retired: bool = False,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[UniversityOut]:
    rows, next_cursor = await catalogue.list_universities(
        session, include_retired=include_retired, cursor=cursor, limit=limit
    )
    return Page[UniversityOut](items=[university_out(u) for u in rows], next_cursor=next_cursor)


@router.post(
    "/universities",
    status_code=status.HTTP_201_CREATED,
    response_model=UniversityOut,
    responses=problem_responses(409, 422),
)
async def create_university(
    body: UniversityCreate,
    request: Request,
    actor: AdminStaff,
    session: WriteSession,
    ctx: ContextDep,
    idempotency_key: IdempotencyKey,
) -> JSONResponse:
    """Add a partner university. The slug is unique among live universities."""

    async def handler() -> tuple[int, UniversityOut]:
        return 201, university_out(await catalogue.create_university(session, actor, body, ctx))

    return await run_idempotent_for(
        session, request, actor.user_id, "referrals.universities", idempotency_key, body, handler
    )


@router.patch(
    "/universities/{university_id}", response_model=UniversityOut, responses=problem_responses(404, 409, 422)
)
async def update_university(
    university_id: uuid.UUID,
    body: UniversityUpdate,
    actor: AdminStaff,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
) -> UniversityOut:
    return university_out(await catalogue.update_university(session, rt, actor, university_id, body, ctx))


@router.delete(
    "/universities/{university_id}", response_model=UniversityOut, responses=problem_responses(404)
)
async def retire_university(
    university_id: uuid.UUID, actor: AdminStaff, session: WriteSession, rt: RuntimeDep, ctx: ContextDep
) -> UniversityOut:
    """Retire (soft-delete): the university and its programs leave the catalogue; links stop."""
    return university_out(await catalogue.retire_university(session, rt, actor, university_id, ctx))


# -- programs -------------------------------------------------------------------------------------


@router.post(
    "/programs",
    status_code=status.HTTP_201_CREATED,
    response_model=StaffProgramOut,
    responses=problem_responses(404, 409, 422),
)
async def create_program(
    body: ProgramCreate,
    request: Request,
    actor: AdminStaff,
    session: WriteSession,
    ctx: ContextDep,
    idempotency_key: IdempotencyKey,
) -> JSONResponse:
    async def handler() -> tuple[int, StaffProgramOut]:
        return 201, staff_program_out(*await catalogue.create_program(session, actor, body, ctx))

    return await run_idempotent_for(
        session, request, actor.user_id, "referrals.programs", idempotency_key, body, handler
    )


@router.get("/programs/{program_id}", response_model=StaffProgramOut, responses=problem_responses(404))
async def get_program(program_id: uuid.UUID, _: AdminStaff, session: ReadSession) -> StaffProgramOut:
    return staff_program_out(*await catalogue.get_program(session, program_id, include_retired=True))


@router.patch(
    "/programs/{program_id}", response_model=StaffProgramOut, responses=problem_responses(404, 409, 422)
)
async def update_program(
    program_id: uuid.UUID,
    body: ProgramUpdate,
    actor: AdminStaff,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
) -> StaffProgramOut:
    return staff_program_out(*await catalogue.update_program(session, rt, actor, program_id, body, ctx))


@router.delete("/programs/{program_id}", response_model=StaffProgramOut, responses=problem_responses(404))
async def retire_program(
    program_id: uuid.UUID, actor: AdminStaff, session: WriteSession, rt: RuntimeDep, ctx: ContextDep
) -> StaffProgramOut:
    """Retire (soft-delete): the program leaves the catalogue and its share links stop redirecting."""
    return staff_program_out(*await catalogue.retire_program(session, rt, actor, program_id, ctx))


# -- campaigns ------------------------------------------------------------------------------------


@router.get("/campaigns", response_model=Page[CampaignOut], responses=problem_responses(422))
async def list_campaigns(
    _: AdminStaff,
    session: ReadSession,
    state: CampaignState | None = None,
    program_id: uuid.UUID | None = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[CampaignOut]:
    rows, next_cursor = await campaigns.list_campaigns(
        session, state=state, program_id=program_id, cursor=cursor, limit=limit
    )
    return Page[CampaignOut](items=[campaign_out(c, p) for c, p in rows], next_cursor=next_cursor)


@router.post(
    "/campaigns",
    status_code=status.HTTP_201_CREATED,
    response_model=CampaignOut,
    responses=problem_responses(404, 422),
)
async def create_campaign(
    body: CampaignCreate,
    request: Request,
    actor: AdminStaff,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
    idempotency_key: IdempotencyKey,
) -> JSONResponse:
    """A new campaign starts as a draft. When several active campaigns apply to a referral, the one
    with the highest priority wins, then the latest start, then the newest."""

    async def handler() -> tuple[int, CampaignOut]:
        return 201, campaign_out(*await campaigns.create_campaign(session, rt, actor, body, ctx))

    return await run_idempotent_for(
        session, request, actor.user_id, "referrals.campaigns", idempotency_key, body, handler
    )


@router.get("/campaigns/{campaign_id}", response_model=CampaignOut, responses=problem_responses(404))
async def get_campaign(campaign_id: uuid.UUID, _: AdminStaff, session: ReadSession) -> CampaignOut:
    campaign = await campaigns.get_campaign(session, campaign_id)
    return campaign_out(campaign, await campaigns.program_ids_of(session, campaign.id))


@router.patch(
    "/campaigns/{campaign_id}", response_model=CampaignOut, responses=problem_responses(404, 409, 422)
)
async def update_campaign(
    campaign_id: uuid.UUID,
    body: CampaignUpdate,
    actor: AdminStaff,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
) -> CampaignOut:
    """Edit a campaign that has not ended (an ended one answers 409)."""
    return campaign_out(*await campaigns.update_campaign(session, rt, actor, campaign_id, body, ctx))


@router.post(
    "/campaigns/{campaign_id}/state", response_model=CampaignOut, responses=problem_responses(404, 409, 422)
)
async def change_campaign_state(
    campaign_id: uuid.UUID,
    body: CampaignStateChange,
    request: Request,
    actor: AdminStaff,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
    idempotency_key: IdempotencyKey,
) -> JSONResponse:
    """draft -> active | ended; active -> paused | ended; paused -> active | ended; ended is final.
    Anything else answers 409 with `allowed` listing the states it may move to. A retry with the same
    Idempotency-Key and body answers the first result (not a 409 for the move already made)."""

    async def handler() -> tuple[int, CampaignOut]:
        moved = await campaigns.transition_campaign(session, rt, actor, campaign_id, body.state, ctx)
        return 200, campaign_out(*moved)

    return await run_idempotent_for(
        session, request, actor.user_id, "referrals.campaign_state", idempotency_key, body, handler
    )


# -- vanity codes ---------------------------------------------------------------------------------


@router.post(
    "/vanity-codes/{code}/revoke", response_model=VanityCodeOut, responses=problem_responses(404, 422)
)
async def revoke_vanity_code(
    code: Annotated[str, Path(max_length=40, pattern=r"^[A-Za-z0-9]+$")],
    body: VanityRevoke,
    actor: AdminStaff,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
) -> VanityCodeOut:
    """The code stops resolving at once (its links still reach the program, uncredited) and stays
    reserved; the member may choose another."""
    return vanity_out(await codes.revoke_vanity_code(session, rt, actor, code, body.reason, ctx))
