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
click, credited to the member whose link it was.

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
from referloop.core.db import raw_connection, utcnow
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
from referloop.referrals.lifecycle.service.leads import email_index, phone_index
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

_WORDS = {
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


def _refusal(report: OutcomeReport) -> str | None:
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


def _parse_click(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


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
    click = _parse_click(report.click_id)
    if click is not None:
        probes.append(Referral.click_id == click)
    contact = []
    if report.email:
        contact.append(Referral.email_index == email_index(rt, report.email))
    if report.phone:
        contact.append(Referral.phone_index == phone_index(rt, report.phone))
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
    click_id = _parse_click(report.click_id)
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


async def _apply(
    session: AsyncSession, referral: Referral, report: OutcomeReport, ctx: RequestContext, actor: states.Actor
) -> OutcomeResult:
    current = states.underlying_state(referral)
    target = TARGETS[report.kind]
    words = f"reported by the partner: {_WORDS[report.kind]}"
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
    refusal = _refusal(report)
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
    result = await _process(session, rt, report, ctx, actor)
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


async def _process(
    session: AsyncSession, rt: Runtime, report: OutcomeReport, ctx: RequestContext, actor: states.Actor
) -> OutcomeResult:
    """Match and apply one report whose receipt the caller holds (ORM path, one item at a time)."""
    if not await _program_of_university(session, report):
        return OutcomeResult("not_found", None, None, "no such program at this university")
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


# --------------------------------------------------------------------------------------------------
# Batches: the same rules as `apply_partner_outcome` item after item, in a constant number of
# statements. Receipts are claimed in one statement, every item is matched in one, the matched
# referrals are locked in id order in one, the moves are decided in Python (`_decide`, a fold over
# the items of each referral in batch order), and the referral rows, history, outbox events, reward
# rows and receipts are written one statement each (audit rows: one per move, a few hundred per INSERT).
# Items on a rare path (a referral made from a click, a code sign-up adopting a program, a report
# that matches several referrals) go through `_process` one at a time after the others; every
# referral they may touch is kept out of the set path, so the order between the two does not matter.


class _Rare(Exception):
    """The set path cannot decide this item: it goes through `_process`."""


class BatchFallback(Exception):
    """The set path gives up on the whole batch (the caller applies it item by item)."""


@dataclass
class _Row:
    """A locked referral as the batch folds it."""

    id: uuid.UUID
    member_id: uuid.UUID
    referee_id: uuid.UUID | None
    program_id: uuid.UUID | None
    university_id: uuid.UUID | None
    campaign_id: uuid.UUID | None
    state: str
    held_from_state: str | None
    fee_amount: int | None
    fee_currency: str | None
    invited_at: datetime | None
    signed_up_at: datetime | None
    applied_at: datetime | None
    enrolled_at: datetime | None
    rewarded_at: datetime | None
    closed_at: datetime | None
    expires_at: datetime | None
    state_changed_at: datetime | None
    updated_at: datetime | None
    changed: bool = False

    def moved(self) -> states.MovedReferral:
        return states.MovedReferral(
            self.id, self.member_id, self.referee_id, self.program_id, self.university_id, self.campaign_id
        )


_ROW_COLUMNS = (
    "id, member_id, referee_id, program_id, university_id, campaign_id, state, held_from_state,"
    " fee_amount, fee_currency, invited_at, signed_up_at, applied_at, enrolled_at, rewarded_at,"
    " closed_at, expires_at, state_changed_at, updated_at"
)
_LOCK_MANY = f"SELECT {_ROW_COLUMNS} FROM referrals WHERE id = ANY(CAST($1 AS uuid[])) ORDER BY id FOR UPDATE"  # noqa: S608 - fixed columns
_STAMP_COLUMNS = ("invited_at", "signed_up_at", "applied_at", "enrolled_at", "rewarded_at")
_UPDATE_MANY = """
UPDATE referrals r SET state = u.state, held_from_state = u.held_from_state, fee_amount = u.fee_amount,
    fee_currency = u.fee_currency, invited_at = u.invited_at, signed_up_at = u.signed_up_at,
    applied_at = u.applied_at, enrolled_at = u.enrolled_at, rewarded_at = u.rewarded_at,
    closed_at = u.closed_at, expires_at = u.expires_at, state_changed_at = u.state_changed_at,
    updated_at = u.updated_at
FROM unnest(CAST($1 AS uuid[]), CAST($2 AS text[]), CAST($3 AS text[]), CAST($4 AS bigint[]),
            CAST($5 AS text[]), CAST($6 AS timestamptz[]), CAST($7 AS timestamptz[]),
            CAST($8 AS timestamptz[]), CAST($9 AS timestamptz[]), CAST($10 AS timestamptz[]),
            CAST($11 AS timestamptz[]), CAST($12 AS timestamptz[]), CAST($13 AS timestamptz[]),
            CAST($14 AS timestamptz[]))
    AS u(id, state, held_from_state, fee_amount, fee_currency, invited_at, signed_up_at, applied_at,
         enrolled_at, rewarded_at, closed_at, expires_at, state_changed_at, updated_at)
WHERE r.id = u.id
"""

# In key order, so two batches that share receipts wait on each other instead of deadlocking.
_CLAIM_MANY = """
INSERT INTO partner_outcomes (university_id, external_ref, kind, status, occurred_at, created_at)
SELECT $1, c.external_ref, c.kind, 'applied', c.occurred_at, $2
FROM unnest(CAST($3 AS text[]), CAST($4 AS text[]), CAST($5 AS timestamptz[]))
    AS c(external_ref, kind, occurred_at)
ORDER BY c.external_ref, c.kind
ON CONFLICT DO NOTHING
RETURNING external_ref, kind
"""
_STORED_MANY = """
SELECT o.external_ref, o.kind, o.referral_id, o.state, o.reason FROM partner_outcomes o
JOIN unnest(CAST($2 AS text[]), CAST($3 AS text[])) AS k(external_ref, kind)
  ON o.external_ref = k.external_ref AND o.kind = k.kind
WHERE o.university_id = $1
"""
_SETTLE_MANY = """
UPDATE partner_outcomes o SET referral_id = s.referral_id, status = s.status, state = s.state,
    reason = s.reason
FROM unnest(CAST($2 AS text[]), CAST($3 AS text[]), CAST($4 AS uuid[]), CAST($5 AS text[]),
            CAST($6 AS text[]), CAST($7 AS text[]))
    AS s(external_ref, kind, referral_id, status, state, reason)
WHERE o.university_id = $1 AND o.external_ref = s.external_ref AND o.kind = s.kind
"""
_FORGET_MANY = """
DELETE FROM partner_outcomes o USING unnest(CAST($2 AS text[]), CAST($3 AS text[])) AS k(external_ref, kind)
WHERE o.university_id = $1 AND o.external_ref = k.external_ref AND o.kind = k.kind
"""
_PROGRAMS = "SELECT id FROM programs WHERE university_id = $1 AND id = ANY(CAST($2 AS uuid[]))"

# Every probe of `_find` for every item at once: the candidates of each probe, best first (the same
# scope and order as `_find`). More than one candidate for the probe that decides is a rare path.
_CANDIDATES = 8
_MATCH_ORDER = (
    "CASE WHEN r.program_id = i.prog THEN 0 ELSE 1 END,"
    " CASE WHEN r.state IN ('rejected', 'expired', 'reversed') THEN 1 ELSE 0 END, r.id DESC"
)
_MATCH_SCOPE = (
    "(r.university_id = $1 OR (i.prog IS NOT NULL AND r.program_id IS NULL)) AND r.state <> 'expired'"
    " AND (i.prog IS NULL OR r.program_id = i.prog OR r.program_id IS NULL)"
)
_MATCH_MANY = f"""
SELECT i.idx,
  ARRAY(SELECT r.id FROM referrals r WHERE r.id = i.rid AND {_MATCH_SCOPE}
        ORDER BY {_MATCH_ORDER} LIMIT {_CANDIDATES}) AS by_id,
  ARRAY(SELECT r.id FROM referrals r WHERE r.click_id = i.click AND {_MATCH_SCOPE}
        ORDER BY {_MATCH_ORDER} LIMIT {_CANDIDATES}) AS by_click,
  ARRAY(SELECT r.id FROM referrals r WHERE (r.email_index = i.em OR r.phone_index = i.ph) AND {_MATCH_SCOPE}
        ORDER BY {_MATCH_ORDER} LIMIT {_CANDIDATES}) AS by_contact
FROM unnest(CAST($2 AS int[]), CAST($3 AS uuid[]), CAST($4 AS uuid[]), CAST($5 AS bytea[]),
            CAST($6 AS bytea[]), CAST($7 AS uuid[])) AS i(idx, rid, click, em, ph, prog)
"""  # noqa: S608 - fixed text


def _decide(row: _Row, report: OutcomeReport, now: datetime) -> tuple[OutcomeResult, list[states.Move]]:
    """What `_apply` does to `row` (which it updates in place), as data: the result and the moves.
    Pure: no I/O."""
    current = ReferralState(row.held_from_state or row.state)
    target = TARGETS[report.kind]
    words = f"reported by the partner: {_WORDS[report.kind]}"
    at = min(report.occurred_at, now)

    def result(status: OutcomeStatus, reason: str | None = None) -> OutcomeResult:
        return OutcomeResult(status, row.id, row.state, reason)

    if current in FINAL_STATES:
        return result("stale", f"the referral is already {current.value}"), []
    if target in (S.applied, S.enrolled):
        if states.rank(target) < states.rank(current):
            return result("stale", f"the referral is already {current.value}"), []
        if target is current:
            if report.kind is OutcomeKind.application_accepted:
                note = states.Move(row.moved(), current.value, current.value, False, words, at, noted=True)
                return result("applied"), [note]
            return result("duplicate", f"the referral is already {current.value}"), []
        path = states.forward_path(current, target)
    elif target is S.rejected and current in (S.enrolled, S.rewarded):
        return result("stale", "the referral is enrolled; report enrolment_cancelled to reverse it"), []
    else:
        path = [target]
    if not path or any(
        step not in states.TRANSITIONS[before] for before, step in zip([current, *path], path, strict=False)
    ):
        raise _Rare  # `transition` would refuse it: let the item path say so
    if report.fee_amount is not None and report.fee_currency:
        row.fee_amount = report.fee_amount
        row.fee_currency = report.fee_currency.upper()
    moves = []
    held = row.state == S.fraud_hold.value
    for step in path:
        why = words if step is target else f"implied by: {words}"
        if held:
            why = f"{why} (while on fraud hold)"
        moves.append(states.Move(row.moved(), current.value, step.value, held, why, at))
        if held:
            row.held_from_state = step.value
        else:
            row.state = step.value
        row.state_changed_at = now
        row.updated_at = now
        stamp = _STAMP_COLUMNS[states.CHAIN.index(step)] if step in states.CHAIN else None
        if stamp and getattr(row, stamp) is None:
            setattr(row, stamp, at)
        if step in FINAL_STATES:
            row.closed_at = at
        if step is not S.invited:
            row.expires_at = None
        current = step
    row.changed = True
    return result("applied"), moves


def _key(report: OutcomeReport) -> tuple[str, str]:
    return report.external_ref, report.kind.value


async def apply_partner_outcomes(
    session: AsyncSession,
    rt: Runtime,
    reports: list[OutcomeReport],
    ctx: RequestContext,
    *,
    actor_id: uuid.UUID | None = None,
) -> list[OutcomeResult]:
    """Apply a batch of one university's reports in the caller's transaction: the same results as
    `apply_partner_outcome` called on each in order (see the section comment). Raises on any
    failure, leaving the caller to roll back to a savepoint (and, say, apply the items one by one)."""
    if not reports:
        return []
    university = reports[0].university_id
    if any(r.university_id != university for r in reports):
        raise BatchFallback("one university per batch")
    actor = states.Actor(ActorType.partner, actor_id)
    now = utcnow()
    driver = await raw_connection(session)
    results: list[OutcomeResult | None] = [None] * len(reports)

    # Refusals, then one claimant per key; later copies of a key answer after their first.
    first_of: dict[tuple[str, str], int] = {}
    copies: list[int] = []
    for i, report in enumerate(reports):
        refusal = _refusal(report)
        if refusal is not None:
            results[i] = OutcomeResult("refused", None, None, refusal)
        elif _key(report) in first_of:
            copies.append(i)
        else:
            first_of[_key(report)] = i
    keyed = list(first_of.values())
    if not keyed:
        return [r for r in results if r is not None]

    claimed_rows = await driver.fetch(
        _CLAIM_MANY,
        university,
        now,
        [reports[i].external_ref for i in keyed],
        [reports[i].kind.value for i in keyed],
        [reports[i].occurred_at for i in keyed],
    )
    claimed = {(r["external_ref"], r["kind"]) for r in claimed_rows}
    seen = [i for i in keyed if _key(reports[i]) not in claimed]
    if seen:
        stored = {
            (r["external_ref"], r["kind"]): r
            for r in await driver.fetch(
                _STORED_MANY,
                university,
                [reports[i].external_ref for i in seen],
                [reports[i].kind.value for i in seen],
            )
        }
        for i in seen:
            row = stored[_key(reports[i])]
            results[i] = OutcomeResult(
                "duplicate",
                row["referral_id"],
                row["state"],
                row["reason"] or "this report was already received",
            )
    work = [i for i in keyed if _key(reports[i]) in claimed]
    holding = list(work)  # the items whose receipt this batch holds

    wanted = {reports[i].program_id for i in work if reports[i].program_id is not None}
    if wanted:
        known = {r["id"] for r in await driver.fetch(_PROGRAMS, university, list(wanted))}
        for i in work:
            if reports[i].program_id is not None and reports[i].program_id not in known:
                results[i] = OutcomeResult("not_found", None, None, "no such program at this university")
        work = [i for i in work if results[i] is None]

    rows = await driver.fetch(
        _MATCH_MANY,
        university,
        work,
        [reports[i].referral_id for i in work],
        [_parse_click(reports[i].click_id) for i in work],
        [email_index(rt, e) if (e := reports[i].email) else None for i in work],
        [phone_index(rt, p) if (p := reports[i].phone) else None for i in work],
        [reports[i].program_id for i in work],
    )
    match: dict[int, uuid.UUID] = {}
    rare_refs: set[uuid.UUID] = set()
    rare: set[int] = set()
    lost: list[int] = []  # matched nothing
    for r in rows:
        i = int(r["idx"])
        found = next((list(c) for c in (r["by_id"], r["by_click"], r["by_contact"]) if c), [])
        if len(found) >= _CANDIDATES:
            raise BatchFallback("too many candidates")
        if not found:
            if _parse_click(reports[i].click_id) is not None:
                rare.add(i)  # may make a referral from the click
            else:
                lost.append(i)
            continue
        match[i] = found[0]
        if len(found) > 1:
            # Several candidates: which one wins may change as the batch moves them, so every
            # candidate, and every item on one, goes to the item path.
            rare.add(i)
            rare_refs.update(found)

    locked: dict[uuid.UUID, _Row] = {}
    targets = sorted({ref for i, ref in match.items() if i not in rare and ref not in rare_refs})
    if targets:
        for rec in await driver.fetch(_LOCK_MANY, targets):
            locked[rec["id"]] = _Row(**dict(rec))
    for i, ref in match.items():
        row = locked.get(ref)
        report = reports[i]
        if (
            row is None
            or row.program_id is None  # a code sign-up: adopting the program is the item path's
            or row.university_id != university
            or row.state == S.expired.value
            or (report.program_id is not None and row.program_id != report.program_id)
        ):
            rare_refs.add(ref)
    for i, ref in match.items():
        if ref in rare_refs:
            rare.add(i)
    if rare:
        rare.update(lost)  # a referral the item path makes may match them
        lost = []
    for i in lost:
        results[i] = OutcomeResult("not_found", None, None, "no referral matches this report")

    # The fold, in batch order.
    moves: list[states.Move] = []
    for i in sorted(match):
        if i in rare:
            continue
        row = locked[match[i]]
        try:
            result, made = _decide(row, reports[i], now)
        except _Rare:
            raise BatchFallback("a move the state machine refuses") from None
        results[i] = result
        moves.extend(made)
    changed = [row for row in locked.values() if row.changed]
    if changed:
        await driver.execute(
            _UPDATE_MANY,
            [row.id for row in changed],
            [row.state for row in changed],
            [row.held_from_state for row in changed],
            [row.fee_amount for row in changed],
            [row.fee_currency for row in changed],
            *([getattr(row, c) for row in changed] for c in _STAMP_COLUMNS),
            [row.closed_at for row in changed],
            [row.expires_at for row in changed],
            [row.state_changed_at for row in changed],
            [row.updated_at for row in changed],
        )
    await states.write_moves(session, moves, actor=actor, ctx=ctx, now=now)

    for i in sorted(rare):  # the rare paths, one at a time, in batch order
        results[i] = await _process(session, rt, reports[i], ctx, actor)

    done = {i: r for i in holding if (r := results[i]) is not None}
    assert len(done) == len(holding)
    settled = [i for i, r in done.items() if r.status not in ("not_found", "refused")]
    forgotten = [i for i, r in done.items() if r.status in ("not_found", "refused")]
    if settled:
        await driver.execute(
            _SETTLE_MANY,
            university,
            [reports[i].external_ref for i in settled],
            [reports[i].kind.value for i in settled],
            [done[i].referral_id for i in settled],
            [done[i].status for i in settled],
            [done[i].state for i in settled],
            [done[i].reason for i in settled],
        )
    if forgotten:
        await driver.execute(
            _FORGET_MANY,
            university,
            [reports[i].external_ref for i in forgotten],
            [reports[i].kind.value for i in forgotten],
        )

    for i in copies:  # a key seen earlier in this batch
        first = results[first_of[_key(reports[i])]]
        assert first is not None
        if first.status in ("not_found", "refused"):
            # No receipt stands: the copy is a new report, as it would be one at a time.
            results[i] = await apply_partner_outcome(session, rt, reports[i], ctx, actor_id=actor_id)
        else:
            results[i] = OutcomeResult(
                "duplicate",
                first.referral_id,
                first.state,
                first.reason or "this report was already received",
            )
    out = [r for r in results if r is not None]
    assert len(out) == len(reports)
    return out
