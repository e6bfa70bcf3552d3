"""Partner look-ups: the referrals of the key's university, one (with its timeline) or a page of them.

Scoped like the outcome reports: a referral of another university's program answers 404, the same as
one that does not exist, and never appears in a list. Rows, filters and the referee's mask come from
the member-side queries (lifecycle.service.queries), so a partner sees a referee exactly as the
referrer does: first name and initial, never an email or a phone."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.pagination import paginate_by_time_desc, split_page
from referloop.referrals.lifecycle.errors import ReferralNotFound
from referloop.referrals.lifecycle.models import Referral, ReferralState
from referloop.referrals.lifecycle.service import queries
from referloop.referrals.partner.schemas import (
    PartnerReferralDetail,
    PartnerReferralOut,
    PartnerTimelineItem,
)
from referloop.referrals.partner.service.keys import PartnerPrincipal


@dataclass(frozen=True)
class PartnerReferralFilters:
    state: ReferralState | None = None
    program_id: uuid.UUID | None = None
    updated_since: datetime | None = None  # changed at or after


def _scoped(partner: PartnerPrincipal, f: PartnerReferralFilters) -> Select[Any]:
    stmt = queries.filtered_referrals(
        queries.referral_select(),
        queries.ReferralFilters(state=f.state, program_id=f.program_id, university_id=partner.university_id),
    )
    if f.updated_since is not None:
        stmt = stmt.where(Referral.updated_at >= f.updated_since)
    return stmt


def referral_out(row: queries.Row) -> PartnerReferralOut:
    referral = row[0]
    assert referral.program_id is not None  # a referral with a university has its program
    return PartnerReferralOut(
        id=referral.id,
        program_id=referral.program_id,
        state=ReferralState(referral.state),
        referee=queries.referral_out(row).referee,  # the member API's mask, not a copy of it
        state_changed_at=referral.state_changed_at,
        created_at=referral.created_at,
        updated_at=referral.updated_at,
    )


async def get_referral(
    session: AsyncSession, partner: PartnerPrincipal, referral_id: uuid.UUID
) -> PartnerReferralDetail:
    """One referral of the partner's university with its timeline; any other id: ReferralNotFound."""
    stmt = _scoped(partner, PartnerReferralFilters()).where(Referral.id == referral_id)
    found = (await session.execute(stmt)).first()
    if found is None:
        raise ReferralNotFound("No such referral.")
    row: queries.Row = (found[0], found[1], found[2])
    # Member-facing timeline, without reasons: a partner sees what changed, when, and by whom.
    timeline = await queries.timeline(session, referral_id, for_staff=False)
    return PartnerReferralDetail(
        **referral_out(row).model_dump(),
        timeline=[
            PartnerTimelineItem(
                from_state=t.from_state, to_state=t.to_state, actor=t.actor, occurred_at=t.occurred_at
            )
            for t in timeline
        ],
    )


async def list_referrals(
    session: AsyncSession,
    partner: PartnerPrincipal,
    filters: PartnerReferralFilters,
    *,
    cursor: str | None,
    limit: int,
) -> tuple[list[PartnerReferralOut], str | None]:
    """The partner's referrals, most recently changed first (cursor over updated_at, id)."""
    stmt = paginate_by_time_desc(_scoped(partner, filters), Referral.updated_at, Referral.id, cursor, limit)
    rows: list[queries.Row] = [(r, p, u) for r, p, u in await session.execute(stmt)]
    page, next_cursor = split_page(rows, limit, lambda r: [r[0].updated_at, r[0].id])
    return [referral_out(r) for r in page], next_cursor
