"""The referral state machine: legal moves, and the one function that makes a move.

    invited -> signed_up -> applied -> enrolled -> rewarded
    exits: rejected (the partner), expired (an invitation past its window, by the worker),
           reversed (the enrolment was cancelled), fraud_hold (staff)

An invited lead may apply without signing up here (a partner reports the application), so
invited -> applied is legal; a sign-up is never implied by a partner's report. A cancellation may
arrive before the enrolment it cancels (reports come out of order), so any live state before
enrolled may also move to reversed. Final states (rejected, expired, reversed) move nowhere.

A fraud hold overlays the state: `held_from_state` keeps the state underneath, partner reports keep
moving it while the hold lasts (nothing is lost), and lifting the hold returns to it. Rewards are
not granted or released while a referral is on hold.

Every move writes a history row, an audit row and an outbox event in the caller's transaction;
reaching a milestone queues its rewards, and a reversal asks for the enrolment's rewards back."""

from __future__ import annotations

import functools
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import TextClause, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from referloop.compliance import audit
from referloop.core.context import RequestContext
from referloop.core.db import raw_connection, utcnow
from referloop.core.ids import uuid7
from referloop.core.outbox import enqueue
from referloop.referrals.lifecycle.errors import IllegalReferralTransition, ReferralNotFound
from referloop.referrals.lifecycle.models import (
    FINAL_STATES,
    ActorType,
    Referral,
    ReferralState,
)
from referloop.referrals.rewards.models import Milestone
from referloop.referrals.rewards.service import queue as reward_queue

CREATED_TOPIC = "referrals.referral_created"
STATE_CHANGED_TOPIC = "referrals.state_changed"

S = ReferralState
CHAIN: tuple[ReferralState, ...] = (S.invited, S.signed_up, S.applied, S.enrolled, S.rewarded)

TRANSITIONS: dict[ReferralState, frozenset[ReferralState]] = {
    S.invited: frozenset({S.signed_up, S.applied, S.rejected, S.expired, S.reversed, S.fraud_hold}),
    S.signed_up: frozenset({S.applied, S.rejected, S.reversed, S.fraud_hold}),
    S.applied: frozenset({S.enrolled, S.rejected, S.reversed, S.fraud_hold}),
    S.enrolled: frozenset({S.rewarded, S.reversed, S.fraud_hold}),
    S.rewarded: frozenset({S.reversed, S.fraud_hold}),
    S.rejected: frozenset(),
    S.expired: frozenset(),
    S.reversed: frozenset(),
    S.fraud_hold: frozenset(),  # only lifted (back to held_from_state)
}

LIFT_HOLD = "lift_hold"
_STAMPS = {
    S.invited: "invited_at",
    S.signed_up: "signed_up_at",
    S.applied: "applied_at",
    S.enrolled: "enrolled_at",
    S.rewarded: "rewarded_at",
}
_MILESTONES = {S.signed_up: Milestone.signed_up, S.applied: Milestone.applied, S.enrolled: Milestone.enrolled}


@dataclass(frozen=True, slots=True)
class Actor:
    type: ActorType
    id: uuid.UUID | None = None


SYSTEM = Actor(ActorType.system)


def underlying_state(referral: Referral) -> ReferralState:
    """The state a fraud hold keeps underneath, or the state itself."""
    return ReferralState(referral.held_from_state or referral.state)


def allowed_moves(referral: Referral) -> list[str]:
    if referral.state == S.fraud_hold.value:
        return [LIFT_HOLD]
    return sorted(s.value for s in TRANSITIONS[ReferralState(referral.state)])


def rank(state: ReferralState) -> int:
    return CHAIN.index(state) if state in CHAIN else -1


def forward_path(current: ReferralState, target: ReferralState) -> list[ReferralState]:
    """The states a partner's report passes through from `current` to `target` on the main chain,
    never implying a sign-up (invited -> enrolled is [applied, enrolled])."""
    if current not in CHAIN or target not in CHAIN or rank(target) <= rank(current):
        return []
    return [s for s in CHAIN[rank(current) + 1 : rank(target) + 1] if s is not S.signed_up]


async def lock_referral(session: AsyncSession, referral_id: uuid.UUID) -> Referral:
    referral = await session.scalar(
        select(Referral)
        .where(Referral.id == referral_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if referral is None:
        raise ReferralNotFound("No such referral.")
    return referral


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def event_base(referral: Referral | MovedReferral) -> dict[str, Any]:
    """The fields every lifecycle event carries: from the ORM row, or from a batch's moved row."""
    return {
        "referral_id": str(referral.id),
        "referrer_id": str(referral.member_id),
        "program_id": str(referral.program_id) if referral.program_id else None,
        "university_id": str(referral.university_id) if referral.university_id else None,
        "campaign_id": str(referral.campaign_id) if referral.campaign_id else None,
    }


_HISTORY = text(
    "INSERT INTO referral_events (id, referral_id, member_id, from_state, to_state, actor_type, actor_id,"
    " reason, occurred_at, created_at)"
    " VALUES (:id, :referral_id, :member_id, :from_state, :to_state, :actor_type, :actor_id, :reason, :at, :now)"
)


def _history_params(
    referral: Referral, from_state: str | None, to_state: str, actor: Actor, reason: str, at: datetime
) -> dict[str, Any]:
    return {
        "id": uuid7(),
        "referral_id": referral.id,
        "member_id": referral.member_id,
        "from_state": from_state,
        "to_state": to_state,
        "actor_type": actor.type.value,
        "actor_id": actor.id,
        "reason": reason[:500],
        "at": at,
        "now": utcnow(),
    }


async def _history(
    session: AsyncSession,
    referral: Referral,
    from_state: str | None,
    to_state: str,
    actor: Actor,
    reason: str,
    at: datetime,
) -> None:
    # Plain SQL on the hot path of partner batches (an ORM add and flush costs several times more).
    await session.execute(_HISTORY, _history_params(referral, from_state, to_state, actor, reason, at))


@functools.cache
def _move_statement(to: ReferralState, held: bool) -> TextClause:
    """Update the referral and write its history row in one statement."""
    sets = ["state_changed_at = :now", "updated_at = :now"]
    sets.append("held_from_state = :to_state" if held else "state = :to_state")
    stamp = _STAMPS.get(to)
    if stamp:
        sets.append(f"{stamp} = coalesce({stamp}, :at)")
    if to in FINAL_STATES:
        sets.append("closed_at = :at")
    if to is not S.invited:
        sets.append("expires_at = NULL")
    return text(
        f"WITH moved AS (UPDATE referrals SET {', '.join(sets)} WHERE id = :referral_id RETURNING id)"  # noqa: S608 - fixed column names
        " INSERT INTO referral_events (id, referral_id, member_id, from_state, to_state, actor_type,"
        " actor_id, reason, occurred_at, created_at)"
        " SELECT :id, moved.id, :member_id, :from_state, :to_state, :actor_type, :actor_id, :reason, :at, :now"
        " FROM moved"
    )


async def record_created(
    session: AsyncSession,
    referral: Referral,
    *,
    actor: Actor,
    reason: str,
    ctx: RequestContext | None,
    at: datetime | None = None,
) -> None:
    """History, audit and `referrals.referral_created` for a referral just added (and flushed)."""
    now = utcnow()
    at = min(at or referral.created_at or now, now)
    await _history(session, referral, None, referral.state, actor, reason, at)
    await audit.record(
        session,
        action="referrals.referral_created",
        actor_id=actor.id,
        actor_type=actor.type.value,
        target_type="referral",
        target_id=referral.id,
        after={
            "state": referral.state,
            "source": referral.source,
            "program_id": str(referral.program_id) if referral.program_id else None,
            "campaign_id": str(referral.campaign_id) if referral.campaign_id else None,
            "reason": reason,
        },
        ctx=ctx,
    )
    await enqueue(session, CREATED_TOPIC, {**event_base(referral), "state": referral.state, "at": _iso(at)})
    milestone = _MILESTONES.get(ReferralState(referral.state))
    if milestone is not None:
        await reward_queue.queue_milestone(session, referral, milestone, at)


async def queue_reached_milestones(session: AsyncSession, referral: Referral) -> None:
    """Queue the rewards of the milestones a referral reached before it had a campaign (a code
    sign-up reaches `signed_up` with none; a partner's report then gives it one). Queuing is once
    per milestone and role, so a milestone already queued is left alone."""
    for state, milestone in _MILESTONES.items():
        reached = getattr(referral, _STAMPS[state])
        if reached is not None:
            await reward_queue.queue_milestone(session, referral, milestone, reached)


async def transition(
    session: AsyncSession,
    referral: Referral,
    to: ReferralState,
    *,
    actor: Actor,
    reason: str,
    ctx: RequestContext | None = None,
    at: datetime | None = None,
) -> None:
    """Move a (locked) referral one step. Illegal moves raise IllegalReferralTransition (409) before
    anything is written. On a referral under fraud hold the move applies to the state underneath."""
    if to is S.fraud_hold:
        raise ValueError("use put_on_hold")
    now = utcnow()
    at = min(at or now, now)  # a partner's clock may run ahead; history never lies about the future
    current = underlying_state(referral)
    if to not in TRANSITIONS[current]:
        raise IllegalReferralTransition(current.value, to.value, [s.value for s in TRANSITIONS[current]])
    held = referral.state == S.fraud_hold.value
    if held:
        reason = f"{reason} (while on fraud hold)"
    await session.flush()  # whatever the caller changed on the referral first (its fee, its referee)
    params = _history_params(referral, current.value, to.value, actor, reason, at)
    await session.execute(_move_statement(to, held), {**params, "now": now})
    # Keep the loaded object as the row now is, without a second UPDATE at the next flush.
    set_committed_value(referral, "held_from_state" if held else "state", to.value)
    set_committed_value(referral, "state_changed_at", now)
    set_committed_value(referral, "updated_at", now)
    stamp = _STAMPS.get(to)
    if stamp and getattr(referral, stamp) is None:
        set_committed_value(referral, stamp, at)
    if to in FINAL_STATES:
        set_committed_value(referral, "closed_at", at)
    if to is not S.invited:
        set_committed_value(referral, "expires_at", None)
    await audit.record(
        session,
        action="referrals.referral_state_changed",
        actor_id=actor.id,
        actor_type=actor.type.value,
        target_type="referral",
        target_id=referral.id,
        before={"state": current.value},
        after={"state": to.value, "reason": reason, "on_hold": held},
        ctx=ctx,
    )
    await enqueue(
        session,
        STATE_CHANGED_TOPIC,
        {
            **event_base(referral),
            "from_state": current.value,
            "to_state": to.value,
            "at": _iso(at),
            "reason": reason,
        },
    )
    milestone = _MILESTONES.get(to)
    if milestone is not None:
        await reward_queue.queue_milestone(session, referral, milestone, at)
    if to is S.reversed:
        await reward_queue.request_reversal(session, referral.id, now)


async def note(
    session: AsyncSession,
    referral: Referral,
    *,
    actor: Actor,
    reason: str,
    ctx: RequestContext | None = None,
    at: datetime | None = None,
) -> None:
    """A history row (and audit) for news that does not change the state, e.g. an accepted application."""
    now = utcnow()
    current = underlying_state(referral).value
    await _history(session, referral, current, current, actor, reason, min(at or now, now))
    await audit.record(
        session,
        action="referrals.referral_noted",
        actor_id=actor.id,
        actor_type=actor.type.value,
        target_type="referral",
        target_id=referral.id,
        after={"state": current, "reason": reason},
        ctx=ctx,
    )


async def advance(
    session: AsyncSession,
    referral: Referral,
    target: ReferralState,
    *,
    actor: Actor,
    reason: str,
    ctx: RequestContext | None = None,
    at: datetime | None = None,
) -> list[ReferralState]:
    """Move forward along the chain to `target`, through any state in between (each its own history
    row, milestone and event). Returns the states passed."""
    path = forward_path(underlying_state(referral), target)
    for step in path:
        why = reason if step is target else f"implied by: {reason}"
        await transition(session, referral, step, actor=actor, reason=why, ctx=ctx, at=at)
    return path


async def _hold_audit(
    session: AsyncSession,
    referral: Referral,
    action: str,
    before: str,
    after: str,
    actor: Actor,
    reason: str,
    ctx: RequestContext | None,
    now: datetime,
) -> None:
    await _history(session, referral, before, after, actor, reason, now)
    await audit.record(
        session,
        action=action,
        actor_id=actor.id,
        actor_type=actor.type.value,
        target_type="referral",
        target_id=referral.id,
        before={"state": before},
        after={"state": after, "reason": reason},
        ctx=ctx,
    )
    await enqueue(
        session,
        STATE_CHANGED_TOPIC,
        {
            **event_base(referral),
            "from_state": before,
            "to_state": after,
            "at": _iso(now),
            "reason": reason,
        },
    )


async def put_on_hold(
    session: AsyncSession, referral: Referral, *, actor: Actor, reason: str, ctx: RequestContext | None
) -> None:
    current = ReferralState(referral.state)
    if S.fraud_hold not in TRANSITIONS[current]:
        raise IllegalReferralTransition(current.value, S.fraud_hold.value, allowed_moves(referral))
    now = utcnow()
    referral.held_from_state = current.value
    referral.state = S.fraud_hold.value
    referral.state_changed_at = now
    await session.flush()
    await _hold_audit(
        session,
        referral,
        "referrals.fraud_hold_placed",
        current.value,
        S.fraud_hold.value,
        actor,
        reason,
        ctx,
        now,
    )


async def lift_hold(
    session: AsyncSession, referral: Referral, *, actor: Actor, reason: str, ctx: RequestContext | None
) -> None:
    if referral.state != S.fraud_hold.value or referral.held_from_state is None:
        raise IllegalReferralTransition(referral.state, LIFT_HOLD, allowed_moves(referral))
    now = utcnow()
    back = referral.held_from_state
    referral.state = back
    referral.held_from_state = None
    referral.state_changed_at = now
    await session.flush()
    await _hold_audit(
        session, referral, "referrals.fraud_hold_lifted", S.fraud_hold.value, back, actor, reason, ctx, now
    )


# --------------------------------------------------------------------------------------------------
# Set-based moves (partner batches): the caller has locked the referrals (in id order), decided the
# moves in Python with the same rules as `transition` and `note`, and written the referral rows;
# this writes what every move writes besides, a constant number of statements for any number of moves.


@dataclass(frozen=True, slots=True)
class MovedReferral:
    """The columns of a referral that its moves' side effects read."""

    id: uuid.UUID
    member_id: uuid.UUID
    referee_id: uuid.UUID | None
    program_id: uuid.UUID | None
    university_id: uuid.UUID | None
    campaign_id: uuid.UUID | None


@dataclass(frozen=True, slots=True)
class Move:
    """One transition (or a note, when `noted`) as `transition` (or `note`) would make it."""

    referral: MovedReferral
    from_state: str
    to_state: str
    held: bool
    reason: str
    at: datetime
    noted: bool = False


_AUDIT_CHUNK = 500

_HISTORY_MANY = """
INSERT INTO referral_events (id, referral_id, member_id, from_state, to_state, actor_type, actor_id,
                             reason, occurred_at, created_at)
SELECT h.id, h.referral_id, h.member_id, h.from_state, h.to_state, $1, $2, h.reason, h.at, $3
FROM unnest(CAST($4 AS uuid[]), CAST($5 AS uuid[]), CAST($6 AS uuid[]), CAST($7 AS text[]),
            CAST($8 AS text[]), CAST($9 AS text[]), CAST($10 AS timestamptz[]))
    AS h(id, referral_id, member_id, from_state, to_state, reason, at)
"""

_OUTBOX_MANY = """
INSERT INTO outbox_events (id, topic, payload)
SELECT e.id, e.topic, CAST(e.payload AS jsonb)
FROM unnest(CAST($1 AS uuid[]), CAST($2 AS text[]), CAST($3 AS text[])) AS e(id, topic, payload)
"""

# `rewards.service.queue._QUEUE` for many milestones at once.
_QUEUE_MANY = """
INSERT INTO rewards (id, referral_id, referrer_id, member_id, role, milestone, campaign_id, rule_id,
                     program_id, status, currency, reached_at, created_at, updated_at)
SELECT CASE WHEN r.role = 'referrer' THEN q.referrer_reward ELSE q.referee_reward END,
       q.referral_id, q.referrer_id,
       CASE WHEN r.role = 'referrer' THEN q.referrer_id ELSE q.referee_id END,
       r.role, r.milestone, r.campaign_id, r.id, q.program_id, 'queued', c.currency, q.at, $1, $1
FROM unnest(CAST($2 AS uuid[]), CAST($3 AS uuid[]), CAST($4 AS uuid[]), CAST($5 AS uuid[]),
            CAST($6 AS uuid[]), CAST($7 AS uuid[]), CAST($8 AS text[]), CAST($9 AS timestamptz[]),
            CAST($10 AS uuid[]))
    AS q(referrer_reward, referee_reward, referral_id, referrer_id, referee_id, program_id, milestone,
         at, campaign_id)
JOIN reward_rules r ON r.campaign_id = q.campaign_id AND r.milestone = q.milestone AND r.deleted_at IS NULL
JOIN campaigns c ON c.id = r.campaign_id
ON CONFLICT (referral_id, milestone, role) DO NOTHING
"""

_REVERSAL_MANY = """
UPDATE rewards SET reversal_requested_at = $2, updated_at = $2
WHERE referral_id = ANY(CAST($1 AS uuid[])) AND milestone = 'enrolled'
  AND status IN ('queued', 'pending', 'released') AND reversal_requested_at IS NULL
"""


async def write_moves(
    session: AsyncSession,
    moves: list[Move],
    *,
    actor: Actor,
    ctx: RequestContext | None,
    now: datetime,
) -> None:
    """History rows, audit rows, outbox events, milestone rewards and reversal requests of `moves`
    (in order), for referral rows the caller has already updated."""
    if not moves:
        return
    driver = await raw_connection(session)
    await driver.execute(
        _HISTORY_MANY,
        actor.type.value,
        actor.id,
        now,
        [uuid7() for _ in moves],
        [m.referral.id for m in moves],
        [m.referral.member_id for m in moves],
        [m.from_state for m in moves],
        [m.to_state for m in moves],
        [m.reason[:500] for m in moves],
        [m.at for m in moves],
    )
    # One audit row per move, as `transition` and `note` write them, appended a few hundred rows per
    # INSERT (a statement takes at most 32,767 parameters).
    records = [
        audit.AuditRecord(
            action="referrals.referral_noted",
            actor_id=actor.id,
            actor_type=actor.type.value,
            target_type="referral",
            target_id=m.referral.id,
            after={"state": m.to_state, "reason": m.reason},
            ctx=ctx,
        )
        if m.noted
        else audit.AuditRecord(
            action="referrals.referral_state_changed",
            actor_id=actor.id,
            actor_type=actor.type.value,
            target_type="referral",
            target_id=m.referral.id,
            before={"state": m.from_state},
            after={"state": m.to_state, "reason": m.reason, "on_hold": m.held},
            ctx=ctx,
        )
        for m in moves
    ]
    for start in range(0, len(records), _AUDIT_CHUNK):
        await audit.record_many(session, records[start : start + _AUDIT_CHUNK])
    changes = [m for m in moves if not m.noted]
    if changes:
        await driver.execute(
            _OUTBOX_MANY,
            [uuid7() for _ in changes],
            [STATE_CHANGED_TOPIC] * len(changes),
            [
                json.dumps(
                    {
                        **event_base(m.referral),
                        "from_state": m.from_state,
                        "to_state": m.to_state,
                        "at": _iso(m.at),
                        "reason": m.reason,
                    }
                )
                for m in changes
            ],
        )
    queued = [
        m
        for m in changes
        if ReferralState(m.to_state) in _MILESTONES
        and m.referral.campaign_id is not None
        and m.referral.program_id is not None
    ]
    if queued:
        await driver.execute(
            _QUEUE_MANY,
            now,
            [uuid7() for _ in queued],
            [uuid7() for _ in queued],
            [m.referral.id for m in queued],
            [m.referral.member_id for m in queued],
            [m.referral.referee_id for m in queued],
            [m.referral.program_id for m in queued],
            [_MILESTONES[ReferralState(m.to_state)].value for m in queued],
            [m.at for m in queued],
            [m.referral.campaign_id for m in queued],
        )
    reversed_ids = [m.referral.id for m in changes if m.to_state == S.reversed.value]
    if reversed_ids:
        await driver.execute(_REVERSAL_MANY, reversed_ids, now)
