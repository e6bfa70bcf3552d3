"""Campaigns: staff CRUD (audited), the state machine, and which campaign applies to a referral.

Which campaign applies (`choose_campaign`): among campaigns that are `active`, attached to the
program, whose window [starts_at, ends_at) contains the moment, and whose eligibility the referrer
meets, the one with the highest `priority`; on a tie the one that started last (`starts_at`); on a
tie the one created last (the greatest UUIDv7 id). The order is total, so the answer is
deterministic, and the lifecycle records the chosen campaign id on the referral.

Eligibility, all of which must hold for the referrer (at the moment of the choice):
- `eligible_countries`: empty, or contains the referrer's country (a referrer with none is refused);
- `require_email_verified` / `require_phone_verified`: that contact is verified;
- `required_kyc_status`: null, or equal to the referrer's KYC status;
- `min_member_level`: null, or at most the referrer's member level (`users.level`, 1 by default,
  set by admins until the engagement issue computes it).
A campaign the referrer is not eligible for is skipped, so a lower-priority one may apply instead."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, false, func, insert, literal, or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.compliance import audit
from referloop.core.context import RequestContext
from referloop.core.db import utcnow
from referloop.core.errors import Conflict, InvalidInput
from referloop.core.pagination import paginate_by_id_desc, split_page
from referloop.identity.service.sessions import Principal
from referloop.referrals.errors import (
    CampaignEnded,
    CampaignNotFound,
    IllegalCampaignTransition,
    ProgramNotFound,
)
from referloop.referrals.models import Campaign, CampaignProgram, CampaignState, Program
from referloop.referrals.rewards.service import budget
from referloop.referrals.schemas import (
    CampaignCreate,
    CampaignUpdate,
    Eligibility,
    ReferrerCap,
    _check_campaign_fields,
)
from referloop.referrals.service import cache
from referloop.referrals.service.members import MemberFacts
from referloop.runtime import Runtime

TRANSITIONS: dict[CampaignState, frozenset[CampaignState]] = {
    CampaignState.draft: frozenset({CampaignState.active, CampaignState.ended}),
    CampaignState.active: frozenset({CampaignState.paused, CampaignState.ended}),
    CampaignState.paused: frozenset({CampaignState.active, CampaignState.ended}),
    CampaignState.ended: frozenset(),
}


def allowed_transitions(state: str) -> list[CampaignState]:
    return sorted(TRANSITIONS[CampaignState(state)])


CAMPAIGN_FIELDS = (
    "name",
    "description",
    "state",
    "priority",
    "starts_at",
    "ends_at",
    "currency",
    "budget_total_amount",
    "per_referrer_amount",
    "per_referrer_period",
    "eligible_countries",
    "require_email_verified",
    "require_phone_verified",
    "required_kyc_status",
    "min_member_level",
    "attribution_window_days",
)


def _snapshot(campaign: Campaign, program_ids: Sequence[uuid.UUID]) -> dict[str, Any]:
    out: dict[str, Any] = {f: getattr(campaign, f) for f in CAMPAIGN_FIELDS}
    for f in ("starts_at", "ends_at"):
        out[f] = out[f].isoformat() if out[f] is not None else None
    out["program_ids"] = sorted(str(p) for p in program_ids)
    return out


def _apply_money_fields(campaign: Campaign, data: dict[str, Any]) -> None:
    if "budget_total" in data:
        budget = data["budget_total"]
        campaign.budget_total_amount = budget["amount"] if budget else None
    if "per_referrer_cap" in data:
        cap = data["per_referrer_cap"]
        campaign.per_referrer_amount = cap["amount"]["amount"] if cap else None
        campaign.per_referrer_period = cap["period"] if cap else None
    if "eligibility" in data and data["eligibility"] is not None:
        e = data["eligibility"]
        campaign.eligible_countries = sorted(set(e["countries"]))
        campaign.require_email_verified = e["require_email_verified"]
        campaign.require_phone_verified = e["require_phone_verified"]
        campaign.required_kyc_status = e["kyc_status"]
        campaign.min_member_level = e.get("min_member_level")


async def _live_program_short_codes(session: AsyncSession, program_ids: Sequence[uuid.UUID]) -> list[str]:
    rows = (
        await session.execute(
            select(Program.id, Program.short_code).where(
                Program.id.in_(program_ids), Program.deleted_at.is_(None)
            )
        )
    ).all()
    missing = set(program_ids) - {r[0] for r in rows}
    if missing:
        raise ProgramNotFound(f"No such program: {', '.join(sorted(str(m) for m in missing))}.")
    return [r[1] for r in rows]


async def program_ids_of(session: AsyncSession, campaign_id: uuid.UUID) -> list[uuid.UUID]:
    return list(
        (
            await session.scalars(
                select(CampaignProgram.program_id)
                .where(CampaignProgram.campaign_id == campaign_id)
                .order_by(CampaignProgram.program_id)
            )
        ).all()
    )


async def _short_codes_of(session: AsyncSession, program_ids: Sequence[uuid.UUID]) -> list[str]:
    return list((await session.scalars(select(Program.short_code).where(Program.id.in_(program_ids)))).all())


async def create_campaign(
    session: AsyncSession, rt: Runtime, actor: Principal, data: CampaignCreate, ctx: RequestContext
) -> tuple[Campaign, list[uuid.UUID]]:
    program_ids = sorted(set(data.program_ids))
    short_codes = await _live_program_short_codes(session, program_ids)
    campaign = Campaign(
        name=data.name,
        description=data.description,
        state=CampaignState.draft.value,
        priority=data.priority,
        starts_at=data.starts_at,
        ends_at=data.ends_at,
        currency=data.currency,
        attribution_window_days=data.attribution_window_days,
    )
    _apply_money_fields(
        campaign, data.model_dump(mode="json", include={"budget_total", "per_referrer_cap", "eligibility"})
    )
    session.add(campaign)
    await session.flush()
    await session.execute(
        insert(CampaignProgram), [{"campaign_id": campaign.id, "program_id": p} for p in program_ids]
    )
    await audit.record(
        session,
        action="referrals.campaign_created",
        actor_id=actor.user_id,
        actor_type="staff",
        target_type="campaign",
        target_id=campaign.id,
        after=_snapshot(campaign, program_ids),
        ctx=ctx,
    )
    await cache.invalidate_programs(rt, *short_codes)
    return campaign, program_ids


async def get_campaign(session: AsyncSession, campaign_id: uuid.UUID, *, lock: bool = False) -> Campaign:
    stmt = select(Campaign).where(Campaign.id == campaign_id)
    if lock:
        stmt = stmt.with_for_update()
    campaign = await session.scalar(stmt)
    if campaign is None:
        raise CampaignNotFound("No such campaign.")
    return campaign


async def update_campaign(
    session: AsyncSession,
    rt: Runtime,
    actor: Principal,
    campaign_id: uuid.UUID,
    data: CampaignUpdate,
    ctx: RequestContext,
) -> tuple[Campaign, list[uuid.UUID]]:
    campaign = await get_campaign(session, campaign_id, lock=True)
    if campaign.state == CampaignState.ended.value:
        raise CampaignEnded("An ended campaign cannot be edited.")
    old_programs = await program_ids_of(session, campaign.id)
    before = _snapshot(campaign, old_programs)
    changes = data.model_dump(mode="json", exclude_unset=True)
    if data.eligibility is not None:
        # A new eligibility replaces the old one whole: the fields it leaves out take their defaults
        # (exclude_unset would drop them, and a partial object failed with a 500).
        changes["eligibility"] = data.eligibility.model_dump(mode="json")
    for field in ("name", "description", "priority", "attribution_window_days"):
        if changes.get(field) is not None:
            setattr(campaign, field, changes[field])
    if "starts_at" in changes and data.starts_at is not None and data.starts_at != campaign.starts_at:
        # A campaign that has begun keeps its start: referrals were attributed and rewards paid by
        # the window it had (a later start would leave them before it). Pausing or ending it is the
        # way to stop it; a draft, or one whose start is still ahead, may move.
        if campaign.state != CampaignState.draft.value and campaign.starts_at <= utcnow():
            raise Conflict("This campaign has started: its starts_at cannot change (pause or end it).")
        campaign.starts_at = data.starts_at
    if "ends_at" in changes:
        campaign.ends_at = data.ends_at
    try:
        _check_campaign_fields(
            campaign.starts_at,
            campaign.ends_at,
            campaign.currency,
            data.budget_total,
            data.per_referrer_cap if "per_referrer_cap" in changes else None,
        )
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc
    had_total = campaign.budget_total_amount is not None
    if "budget_total" in changes:
        await budget.lock_total(session, campaign.id)
    _apply_money_fields(campaign, changes)
    if not had_total and campaign.budget_total_amount is not None:
        await budget.resync_budget(session, campaign.id)
    program_ids = old_programs
    new_codes: list[str] = []
    if data.program_ids is not None:
        program_ids = sorted(set(data.program_ids))
        new_codes = await _live_program_short_codes(session, program_ids)
        await session.execute(delete(CampaignProgram).where(CampaignProgram.campaign_id == campaign.id))
        await session.execute(
            insert(CampaignProgram), [{"campaign_id": campaign.id, "program_id": p} for p in program_ids]
        )
    await session.flush()
    await audit.record(
        session,
        action="referrals.campaign_updated",
        actor_id=actor.user_id,
        actor_type="staff",
        target_type="campaign",
        target_id=campaign.id,
        before=before,
        after=_snapshot(campaign, program_ids),
        ctx=ctx,
    )
    await cache.invalidate_programs(rt, *await _short_codes_of(session, old_programs), *new_codes)
    return campaign, program_ids


async def transition_campaign(
    session: AsyncSession,
    rt: Runtime,
    actor: Principal,
    campaign_id: uuid.UUID,
    wanted: CampaignState,
    ctx: RequestContext,
) -> tuple[Campaign, list[uuid.UUID]]:
    """Move along draft -> active <-> paused -> ended (a draft may also be ended unused). Anything else
    is refused with 409 naming the allowed states, and nothing changes."""
    campaign = await get_campaign(session, campaign_id, lock=True)
    current = CampaignState(campaign.state)
    if wanted not in TRANSITIONS[current]:
        raise IllegalCampaignTransition(current.value, wanted.value, [s.value for s in TRANSITIONS[current]])
    now = utcnow()
    if wanted is CampaignState.active and campaign.ends_at is not None and campaign.ends_at <= now:
        raise Conflict("This campaign's window is over; change ends_at before activating it.")
    campaign.state = wanted.value
    if wanted is CampaignState.active and campaign.activated_at is None:
        campaign.activated_at = now
    if wanted is CampaignState.ended:
        campaign.ended_at = now
    await session.flush()
    program_ids = await program_ids_of(session, campaign.id)
    await audit.record(
        session,
        action="referrals.campaign_state_changed",
        actor_id=actor.user_id,
        actor_type="staff",
        target_type="campaign",
        target_id=campaign.id,
        before={"state": current.value},
        after={"state": wanted.value},
        ctx=ctx,
    )
    await cache.invalidate_programs(rt, *await _short_codes_of(session, program_ids))
    return campaign, program_ids


async def list_campaigns(
    session: AsyncSession,
    *,
    state: CampaignState | None,
    program_id: uuid.UUID | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[tuple[Campaign, list[uuid.UUID]]], str | None]:
    stmt = select(Campaign)
    if state is not None:
        stmt = stmt.where(Campaign.state == state.value)
    if program_id is not None:
        stmt = stmt.where(
            Campaign.id.in_(
                select(CampaignProgram.campaign_id).where(CampaignProgram.program_id == program_id)
            )
        )
    rows = list((await session.scalars(paginate_by_id_desc(stmt, Campaign.id, cursor, limit))).all())
    page, next_cursor = split_page(rows, limit, lambda c: [c.id])
    programs: dict[uuid.UUID, list[uuid.UUID]] = {c.id: [] for c in page}
    if page:
        for cid, pid in (
            await session.execute(
                select(CampaignProgram.campaign_id, CampaignProgram.program_id)
                .where(CampaignProgram.campaign_id.in_(programs))
                .order_by(CampaignProgram.program_id)
            )
        ).all():
            programs[cid].append(pid)
    return [(c, programs[c.id]) for c in page], next_cursor


def budget_view(campaign: Campaign) -> dict[str, Any]:
    """The campaign's money and eligibility fields in API shape."""
    total = (
        {"amount": campaign.budget_total_amount, "currency": campaign.currency}
        if campaign.budget_total_amount is not None
        else None
    )
    cap = (
        ReferrerCap.model_validate(
            {
                "amount": {"amount": campaign.per_referrer_amount, "currency": campaign.currency},
                "period": campaign.per_referrer_period,
            }
        )
        if campaign.per_referrer_amount is not None
        else None
    )
    eligibility = Eligibility.model_validate(
        {
            "countries": campaign.eligible_countries,
            "require_email_verified": campaign.require_email_verified,
            "require_phone_verified": campaign.require_phone_verified,
            "kyc_status": campaign.required_kyc_status,
            "min_member_level": campaign.min_member_level,
        }
    )
    return {"budget_total": total, "per_referrer_cap": cap, "eligibility": eligibility}


# -- which campaign applies -----------------------------------------------------------------------


def _applicable(program_id: uuid.UUID, at: datetime) -> Any:
    return (
        select(Campaign)
        .join(CampaignProgram, CampaignProgram.campaign_id == Campaign.id)
        .where(
            CampaignProgram.program_id == program_id,
            Campaign.state == CampaignState.active.value,
            Campaign.starts_at <= at,
            or_(Campaign.ends_at.is_(None), Campaign.ends_at > at),
        )
    )


async def choose_campaign(
    session: AsyncSession, program_id: uuid.UUID, member: MemberFacts, at: datetime
) -> Campaign | None:
    """The campaign that applies to a referral by `member` (the referrer) for `program_id` at `at`,
    or None. Order: highest priority, then latest starts_at, then greatest id (see module doc)."""
    stmt = (
        _applicable(program_id, at)
        .where(
            or_(
                func.cardinality(Campaign.eligible_countries) == 0,
                literal(member.country).op("=")(func.any(Campaign.eligible_countries))
                if member.country
                else false(),
            ),
            or_(Campaign.require_email_verified.is_(False), true() if member.email_verified else false()),
            or_(Campaign.require_phone_verified.is_(False), true() if member.phone_verified else false()),
            or_(Campaign.required_kyc_status.is_(None), Campaign.required_kyc_status == member.kyc_status),
            or_(Campaign.min_member_level.is_(None), Campaign.min_member_level <= member.level),
        )
        .order_by(Campaign.priority.desc(), Campaign.starts_at.desc(), Campaign.id.desc())
        .limit(1)
    )
    campaign: Campaign | None = await session.scalar(stmt)
    return campaign


async def link_windows(
    session: AsyncSession, program_ids: Sequence[uuid.UUID], default_days: int, at: datetime
) -> dict[uuid.UUID, int]:
    """How long a click's cookie lives, per program: the longest window among campaigns live for the
    program at `at` (the referrer's eligibility is not checked at redirect time), else the default."""
    windows = {p: default_days for p in program_ids}
    if program_ids:
        rows = await session.execute(
            select(CampaignProgram.program_id, func.max(Campaign.attribution_window_days))
            .join(Campaign, Campaign.id == CampaignProgram.campaign_id)
            .where(
                CampaignProgram.program_id.in_(program_ids),
                Campaign.state == CampaignState.active.value,
                Campaign.starts_at <= at,
                or_(Campaign.ends_at.is_(None), Campaign.ends_at > at),
            )
            .group_by(CampaignProgram.program_id)
        )
        windows.update({program_id: int(days) for program_id, days in rows})
    return windows
