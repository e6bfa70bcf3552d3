"""Outcomes a partner (a university) reports: the partner API's one entry into the lifecycle.

Scope: a report only ever matches referrals of its university's programs; anything else is
`not_found`, never "exists elsewhere". A referral signed up through a plain code has no program yet:
a report naming one of the university's programs (`program_id`) adopts it, and its campaign is
chosen then.

Matching, in this order, the first that finds one: `referral_id`; `click_id` (the click recorded at
attribution); the applicant's email (canonical form) or phone, through the blind indexes. Among
several matches, one of `program_id` (when given) is preferred, then a live one over a closed one,
then the newest. An expired invitation is never matched. No referral but a valid click of this
university's program (by a person, within the attribution window) creates a referral from the
click, credited to the member whose link it was; reports naming one click are serialised on it, so
two at once make one referral between them.

Idempotent on (university, external_ref, kind): the receipt is written first, in the caller's
transaction, so a repeated report (even a concurrent one, which waits on the receipt's key) answers
`duplicate` with what the first one did. Reports that found nothing (`not_found`) or were refused
leave no receipt, so they can be sent again once the referral exists.

Out of order: reports are judged against the referral's current state, never replayed in time
order. A report for a later stage passes through the stages before it (`enrolled` on an invited or
signed-up referral records `applied` first, each with its own history row and milestone). A report
for a stage the referral is already at answers `duplicate`; for an earlier stage, or for anything on
a rejected, expired or reversed referral, `stale` (nothing changes). `application_accepted` moves a
referral to applied if it is not there yet, and is noted in the history when it is. A cancellation
that arrives before its enrolment reverses the referral, and the enrolment arriving afterwards is
then `stale`, so the member is never paid for a cancelled enrolment. A rejection after an enrolment
is `stale` (a cancellation is reported as `enrolment_cancelled`). Under a fraud hold, reports move
the state underneath the hold (see `states`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from sqlalchemy import case, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.compliance import audit
from referloop.core.context import RequestContext
from referloop.core.db import utcnow
from referloop.core.errors import NotFound
from referloop.ledger import is_currency
from referloop.referrals.lifecycle.models import (
    FINAL_STATES,
    ActorType,
    Referral,
    ReferralSource,
    ReferralState,
)
from referloop.referrals.lifecycle.service import states
from referloop.referrals.lifecycle.service.leads import email_index, email_indexes, phone_index, phone_indexes
from referloop.referrals.models import Program
from referloop.referrals.service.campaigns import choose_campaign
from referloop.referrals.service.clicks import find_click
from referloop.referrals.service.members import canonical_email, member_facts
from referloop.runtime import Runtime

S = ReferralState


class OutcomeKind(StrEnum):
    application_submitted = "application_submitted"
    application_accepted = "application_accepted"
    application_rejected = "application_rejected"
    enrolled = "enrolled"
    enrolment_cancelled = "enrolment_cancelled"


TARGETS: dict[OutcomeKind, ReferralState] = {
    OutcomeKind.application_submitted: S.applied,
    OutcomeKind.application_accepted: S.applied,
    OutcomeKind.application_rejected: S.rejected,
    OutcomeKind.enrolled: S.enrolled,
    OutcomeKind.enrolment_cancelled: S.reversed,
}

OUTCOME_WORDS = {
    OutcomeKind.application_submitted: "application submitted",
    OutcomeKind.application_accepted: "application accepted",
    OutcomeKind.application_rejected: "application rejected",
    OutcomeKind.enrolled: "enrolled",
    OutcomeKind.enrolment_cancelled: "enrolment cancelled",
}


@dataclass(frozen=True)
class OutcomeReport:
    university_id: uuid.UUID
    kind: OutcomeKind
    occurred_at: datetime
    external_ref: str  # the partner's own id for this item (idempotency per university)
    referral_id: uuid.UUID | None = None
    click_id: str | None = None
    email: str | None = None  # normalized by the caller
    phone: str | None = None  # E.164, normalized by the caller
    program_id: uuid.UUID | None = None
    fee_amount: int | None = None  # minor units
    fee_currency: str | None = None


OutcomeStatus = Literal["applied", "duplicate", "stale", "not_found", "refused"]


@dataclass(frozen=True)
class OutcomeResult:
    status: OutcomeStatus
    referral_id: uuid.UUID | None
    state: str | None  # the referral's state after this report
    reason: str | None  # human-readable, for refused/not_found/stale


def _result(status: OutcomeStatus, referral: Referral | None, reason: str | None = None) -> OutcomeResult:
    return OutcomeResult(
        status, referral.id if referral else None, referral.state if referral else None, reason
    )


def refusal_of(report: OutcomeReport) -> str | None:
    if not report.external_ref or len(report.external_ref) > 200 or not report.external_ref.isprintable():
        return "external_ref must be 1 to 200 printable characters"
    if report.occurred_at.tzinfo is None:
        return "occurred_at must carry a time zone"
    if report.fee_amount is not None:
        if type(report.fee_amount) is not int or report.fee_amount < 0:
            return "the fee is a non-negative integer of minor units"
        if not report.fee_currency or not is_currency(report.fee_currency):
            return "a fee needs a known ISO 4217 currency"
    if not any((report.referral_id, report.click_id, report.email, report.phone)):
        return "give a referral_id, click_id, email or phone to match"
    return None


async def _program_of_university(session: AsyncSession, report: OutcomeReport) -> bool:
    if report.program_id is None:
        return True
    found = await session.scalar(
        select(Program.id).where(
            Program.id == report.program_id, Program.university_id == report.university_id
        )
    )
    return found is not None


def parse_click(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


# One advisory lock per click (`lock_by_name`'s kind), taken in click order in one round trip.
_LOCK_CLICKS = text(
    "SELECT count(pg_advisory_xact_lock(hashtextextended('referrals.click:' || CAST(c AS text), 0)))"
    " FROM (SELECT c FROM unnest(CAST(:clicks AS uuid[])) AS u(c) ORDER BY c) AS ordered"
)


async def lock_clicks(session: AsyncSession, click_ids: list[uuid.UUID]) -> None:
    if click_ids:
        await session.execute(_LOCK_CLICKS, {"clicks": sorted(set(click_ids))})


async def lock_click(session: AsyncSession, click_id: uuid.UUID) -> None:
    """Serialise, until the transaction ends, whatever may make or adopt the referral of one click
    (partner reports naming it, the sign-up it attributed). Not a unique index on `click_id`: a
    sign-up gives its click to every invitation it takes over, so referrals may share one."""
    await lock_clicks(session, [click_id])


async def _find(session: AsyncSession, rt: Runtime, report: OutcomeReport) -> Referral | None:
    in_scope = [Referral.university_id == report.university_id]
    if report.program_id is not None:
        in_scope.append(Referral.program_id.is_(None))  # a code sign-up this report adopts
    base = [or_(*in_scope), Referral.state != S.expired.value]
    if report.program_id is not None:
        base.append(or_(Referral.program_id == report.program_id, Referral.program_id.is_(None)))
    final = [s.value for s in FINAL_STATES]
    order = [case((Referral.state.in_(final), 1), else_=0), Referral.id.desc()]
    if report.program_id is not None:
        order.insert(0, case((Referral.program_id == report.program_id, 0), else_=1))
    probes = []
    if report.referral_id is not None:
        probes.append(Referral.id == report.referral_id)
    click = parse_click(report.click_id)
    if click is not None:
        probes.append(Referral.click_id == click)
    contact = []
    if report.email:
        contact.append(Referral.email_index.in_(email_indexes(rt, report.email)))
    if report.phone:
        contact.append(Referral.phone_index.in_(phone_indexes(rt, report.phone)))
    if contact:
        probes.append(or_(*contact))
    for probe in probes:
        # Found and locked in one statement (FOR UPDATE applies to the one row LIMIT keeps).
        referral: Referral | None = await session.scalar(
            select(Referral)
            .where(probe, *base)
            .order_by(*order)
            .limit(1)
            .with_for_update(of=Referral)
            .execution_options(populate_existing=True)
        )
        if referral is not None:
            return referral
    return None


async def _from_click(
    session: AsyncSession, rt: Runtime, report: OutcomeReport, ctx: RequestContext, actor: states.Actor
) -> Referral | OutcomeResult | None:
    """A referral made from a share-link click of this university's program (see the module doc)."""
    click_id = parse_click(report.click_id)
    if click_id is None:
        return None
    click = await find_click(session, rt, click_id)
    if click is None or click.is_bot:
        return None
    program = await session.get(Program, click.program_id)
    if program is None or program.university_id != report.university_id:
        return None
    if report.program_id is not None and report.program_id != program.id:
        return None
    try:
        referrer = await member_facts(session, click.member_id)
    except NotFound:
        return None
    at = min(report.occurred_at, utcnow())
    campaign = await choose_campaign(session, program.id, referrer, at)
    window = timedelta(
        days=campaign.attribution_window_days if campaign else rt.settings.referral_attribution_window_days
    )
    if click.clicked_at > at or at - click.clicked_at > window:
        return None
    if (
        report.email and referrer.email and canonical_email(report.email) == canonical_email(referrer.email)
    ) or (report.phone and report.phone == referrer.phone):
        return OutcomeResult("refused", None, None, "the applicant is the referrer (self-referral)")
    now = utcnow()
    referral = Referral(
        member_id=referrer.id,
        program_id=program.id,
        university_id=program.university_id,
        campaign_id=campaign.id if campaign else None,
        campaign_chosen_at=at,
        state=S.invited.value,
        source=ReferralSource.click.value,
        click_id=click_id,
        referee_label="An applicant",
        email_index=email_index(rt, report.email) if report.email else None,
        phone_index=phone_index(rt, report.phone) if report.phone else None,
        invited_at=click.clicked_at,
        state_changed_at=now,
        created_at=now,
        updated_at=now,
    )
    session.add(referral)
    await session.flush()
    await states.record_created(
        session,
        referral,
        actor=actor,
        reason="applied through the referrer's share link",
        ctx=ctx,
        at=click.clicked_at,
    )
    return referral


async def _adopt_program(
    session: AsyncSession, referral: Referral, report: OutcomeReport, ctx: RequestContext, actor: states.Actor
) -> None:
    """Give a code sign-up the program the partner reported, and choose its campaign now."""
    assert report.program_id is not None
    program = await session.get(Program, report.program_id)
    assert program is not None
    at = min(report.occurred_at, utcnow())
    campaign = await choose_campaign(session, program.id, await member_facts(session, referral.member_id), at)
    referral.program_id = program.id
    referral.university_id = program.university_id
    referral.campaign_id = campaign.id if campaign else None
    referral.campaign_chosen_at = at
    await session.flush()
    await audit.record(
        session,
        action="referrals.referral_program_set",
        actor_id=actor.id,
        actor_type=actor.type.value,
        target_type="referral",
        target_id=referral.id,
        after={"program_id": str(program.id), "campaign_id": str(campaign.id) if campaign else None},
        ctx=ctx,
    )
    await states.queue_reached_milestones(session, referral)


async def _apply(
    session: AsyncSession, referral: Referral, report: OutcomeReport, ctx: RequestContext, actor: states.Actor
) -> OutcomeResult:
    current = states.underlying_state(referral)
    target = TARGETS[report.kind]
    words = f"reported by the partner: {OUTCOME_WORDS[report.kind]}"
    at = report.occurred_at
    if current in FINAL_STATES:
        return _result("stale", referral, f"the referral is already {current.value}")
    if target in (S.applied, S.enrolled):
        if states.rank(target) < states.rank(current):
            return _result("stale", referral, f"the referral is already {current.value}")
        if target is current:
            if report.kind is OutcomeKind.application_accepted:
                await states.note(session, referral, actor=actor, reason=words, ctx=ctx, at=at)
                return _result("applied", referral)
            return _result("duplicate", referral, f"the referral is already {current.value}")
    elif target is S.rejected and current in (S.enrolled, S.rewarded):
        return _result(
            "stale", referral, "the referral is enrolled; report enrolment_cancelled to reverse it"
        )
    if report.fee_amount is not None and report.fee_currency:
        referral.fee_amount = report.fee_amount
        referral.fee_currency = report.fee_currency.upper()
    if target in (S.applied, S.enrolled):
        await states.advance(session, referral, target, actor=actor, reason=words, ctx=ctx, at=at)
    else:
        await states.transition(session, referral, target, actor=actor, reason=words, ctx=ctx, at=at)
    return _result("applied", referral)


# The receipt, first: a concurrent report with the same key waits here until this one commits.
_RECEIPT = text(
    "INSERT INTO partner_outcomes (university_id, external_ref, kind, status, occurred_at, created_at)"
    " VALUES (:university_id, :external_ref, :kind, 'applied', :occurred_at, :now)"
    " ON CONFLICT DO NOTHING RETURNING external_ref"
)
_STORED = text(
    "SELECT referral_id, state, reason FROM partner_outcomes"
    " WHERE university_id = :university_id AND external_ref = :external_ref AND kind = :kind"
)
_SETTLE = text(
    "UPDATE partner_outcomes SET referral_id = :referral_id, status = :status, state = :state, reason = :reason"
    " WHERE university_id = :university_id AND external_ref = :external_ref AND kind = :kind"
)
_FORGET = text(
    "DELETE FROM partner_outcomes"
    " WHERE university_id = :university_id AND external_ref = :external_ref AND kind = :kind"
)


async def apply_partner_outcome(
    session: AsyncSession,
    rt: Runtime,
    report: OutcomeReport,
    ctx: RequestContext,
    *,
    actor_id: uuid.UUID | None = None,
) -> OutcomeResult:
    """Apply one partner report in the caller's transaction (only flushes). See the module doc.
    `actor_id` (the partner's API key id, say) goes into the history and the audit log."""
    refusal = refusal_of(report)
    if refusal is not None:
        return OutcomeResult("refused", None, None, refusal)
    key = {
        "university_id": report.university_id,
        "external_ref": report.external_ref,
        "kind": report.kind.value,
    }
    receipt = await session.scalar(_RECEIPT, {**key, "occurred_at": report.occurred_at, "now": utcnow()})
    if receipt is None:
        stored = (await session.execute(_STORED, key)).one()
        return OutcomeResult(
            "duplicate", stored.referral_id, stored.state, stored.reason or "this report was already received"
        )

    actor = states.Actor(ActorType.partner, actor_id)
    result = await process_claimed(session, rt, report, ctx, actor)
    if result.status in ("not_found", "refused"):
        await session.execute(_FORGET, key)
    else:
        await session.execute(
            _SETTLE,
            {
                **key,
                "referral_id": result.referral_id,
                "status": result.status,
                "state": result.state,
                "reason": result.reason,
            },
        )
    return result


async def process_claimed(
    session: AsyncSession, rt: Runtime, report: OutcomeReport, ctx: RequestContext, actor: states.Actor
) -> OutcomeResult:
    """Match and apply one report whose receipt the caller holds (ORM path, one item at a time)."""
    if not await _program_of_university(session, report):
        return OutcomeResult("not_found", None, None, "no such program at this university")
    click_id = parse_click(report.click_id)
    if click_id is not None:
        # Before the search: two reports of one click must not both find nothing and both make one.
        await lock_click(session, click_id)
    found = await _find(session, rt, report)
    if found is None:
        made = await _from_click(session, rt, report, ctx, actor)
        if isinstance(made, OutcomeResult):
            return made
        found = made
    if found is None:
        return OutcomeResult("not_found", None, None, "no referral matches this report")
    if found.program_id is None:
        await _adopt_program(session, found, report, ctx, actor)
    return await _apply(session, found, report, ctx, actor)
