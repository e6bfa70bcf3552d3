"""Partner outcome batches: the same rules as `outcomes.apply_partner_outcome` item after item, in a
constant number of statements.

Receipts are claimed in one statement, every item is matched in one, the matched referrals are locked
in id order in one, the moves are decided in Python (`_decide`, a fold over the items of each referral
in batch order), and the referral rows, history, outbox events, reward rows and receipts are written
one statement each (audit rows: one per move, a few hundred per INSERT). Items on a rare path (a
referral made from a click, a code sign-up adopting a program, a report that matches several
referrals) go through `outcomes.process_claimed` one at a time after the others; every referral they
may touch is kept out of the set path, so the order between the two does not matter."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.context import RequestContext
from referloop.core.db import raw_connection, utcnow
from referloop.referrals.lifecycle.models import FINAL_STATES, ActorType, ReferralState
from referloop.referrals.lifecycle.service import outcomes, states
from referloop.referrals.lifecycle.service.leads import email_indexes, phone_indexes
from referloop.referrals.lifecycle.service.outcomes import (
    OUTCOME_WORDS,
    TARGETS,
    OutcomeKind,
    OutcomeReport,
    OutcomeResult,
    OutcomeStatus,
    apply_partner_outcome,
    parse_click,
    refusal_of,
)
from referloop.runtime import Runtime

S = ReferralState


class _Rare(Exception):
    """The set path cannot decide this item: it goes through `outcomes.process_claimed`."""


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
  ARRAY(SELECT r.id FROM referrals r WHERE (r.email_index = ANY((CAST($5 AS bytea[]))[i.n:i.n])
        OR r.phone_index = ANY((CAST($6 AS bytea[]))[i.n:i.n])) AND {_MATCH_SCOPE}
        ORDER BY {_MATCH_ORDER} LIMIT {_CANDIDATES}) AS by_contact
FROM unnest(CAST($2 AS int[]), CAST($3 AS uuid[]), CAST($4 AS uuid[]), CAST($7 AS uuid[]))
    WITH ORDINALITY AS i(idx, rid, click, prog, n)
"""  # noqa: S608 - fixed text


def _decide(row: _Row, report: OutcomeReport, now: datetime) -> tuple[OutcomeResult, list[states.Move]]:
    """What `_apply` does to `row` (which it updates in place), as data: the result and the moves.
    Pure: no I/O."""
    current = ReferralState(row.held_from_state or row.state)
    target = TARGETS[report.kind]
    words = f"reported by the partner: {OUTCOME_WORDS[report.kind]}"
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
        refusal = refusal_of(report)
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

    no_index: list[bytes | None] = [None] * len(rt.cipher.key_ids)
    rows = await driver.fetch(
        _MATCH_MANY,
        university,
        work,
        [reports[i].referral_id for i in work],
        [parse_click(reports[i].click_id) for i in work],
        # One row per item: its indexes under every configured key (a key rotation may be under way).
        [email_indexes(rt, e) if (e := reports[i].email) else no_index for i in work],
        [phone_indexes(rt, p) if (p := reports[i].phone) else no_index for i in work],
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
            if parse_click(reports[i].click_id) is not None:
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

    # Every click the batch names, locked in one statement and in click order before any referral
    # row (as one report and a sign-up take them): an item found rare only after the rows are
    # locked below still reaches the item path, which takes its click's lock again (already held).
    await outcomes.lock_clicks(
        session, [c for i in work if (c := parse_click(reports[i].click_id)) is not None]
    )
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
        results[i] = await outcomes.process_claimed(session, rt, reports[i], ctx, actor)

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
