"""A partner's batch applied set-wise (`apply_partner_outcomes`) gives the same results, and leaves
the same referrals, history, audit rows, events and queued rewards, as the same reports applied one
at a time (`apply_partner_outcome`, each in its own transaction)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from referloop.core.context import RequestContext
from referloop.referrals.lifecycle.models import ActorType
from referloop.referrals.lifecycle.service import OutcomeKind, OutcomeReport, OutcomeResult, outcomes, states
from referloop.referrals.lifecycle.service.outcome_batches import apply_partner_outcomes
from referloop.referrals.lifecycle.service.outcomes import apply_partner_outcome
from referloop.runtime import Runtime
from tests.referrals.helpers import Admin, sql
from tests.referrals.lifecycle.helpers import (
    CTX,
    fixed,
    invite,
    lead_email,
    make_catalogue,
    make_members,
)

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


@dataclass
class World:
    university_id: uuid.UUID
    refs: dict[str, uuid.UUID]  # label -> referral id
    emails: dict[str, str]
    key_id: uuid.UUID


async def build(client: httpx.AsyncClient, runtime: Runtime, admin: Admin) -> World:
    cat = await make_catalogue(
        client, admin, rules=[fixed("applied", "referrer", 5_000), fixed("enrolled", "referrer", 100_000)]
    )
    other = await make_catalogue(client, admin)
    (member,) = await make_members(runtime)
    refs: dict[str, uuid.UUID] = {}
    emails: dict[str, str] = {}
    for label in ("r1", "r2", "r3", "r4", "held", "fee"):
        emails[label] = lead_email()
        refs[label] = await invite(runtime, member, cat.program_id, email=emails[label])
    # Two live referrals for one applicant (one by email, one by phone): a rare path.
    emails["twin"] = lead_email()
    emails["twin_phone"] = f"+9198{uuid.uuid4().int % 10**8:08d}"
    refs["twin_a"] = await invite(runtime, member, cat.program_id, email=emails["twin"])
    refs["twin_b"] = await invite(runtime, member, cat.program_id, phone=emails["twin_phone"])
    refs["elsewhere"] = await invite(runtime, member, other.program_id)
    async with runtime.db.sessionmaker() as session, session.begin():
        held = await states.lock_referral(session, refs["held"])
        await states.put_on_hold(
            session, held, actor=states.Actor(ActorType.staff), reason="checking", ctx=CTX
        )
    return World(cat.university_id, refs, emails, uuid.uuid4())


def items(w: World) -> list[OutcomeReport]:
    def rep(kind: str, ext: str, minutes: int, **match: Any) -> OutcomeReport:
        return OutcomeReport(
            university_id=w.university_id,
            kind=OutcomeKind(kind),
            occurred_at=T0 + timedelta(minutes=minutes),
            external_ref=ext,
            **match,
        )

    r = w.refs
    return [
        # Two reports for one referral in reverse order: the enrolment first, then the application.
        rep("enrolled", "E-1", 10, referral_id=r["r1"], fee_amount=45_000_000, fee_currency="INR"),
        rep("application_submitted", "A-1", 5, referral_id=r["r1"]),
        # The same report twice in the batch.
        rep("enrolled", "E-1", 10, referral_id=r["r1"], fee_amount=45_000_000, fee_currency="INR"),
        # Unknown ids, another university's referral, a click nobody made.
        rep("enrolled", "E-unknown", 1, referral_id=uuid.uuid4()),
        rep("application_submitted", "A-else", 1, referral_id=r["elsewhere"]),
        rep("enrolled", "E-click", 1, click_id=str(uuid.uuid4())),
        # Matched by email, then a note on the same stage, then a stale rejection.
        rep("application_submitted", "A-2", 1, email=w.emails["r2"].upper()),
        rep("application_accepted", "AC-2", 2, email=w.emails["r2"]),
        rep("application_accepted", "AC-2b", 3, referral_id=r["r2"]),
        # A cancellation before its enrolment: the enrolment is stale afterwards.
        rep("enrolment_cancelled", "C-3", 20, referral_id=r["r3"]),
        rep("enrolled", "E-3", 10, referral_id=r["r3"]),
        rep("application_rejected", "R-4", 4, referral_id=r["r4"]),
        rep("enrolled", "E-4", 5, referral_id=r["r4"]),
        # Under a fraud hold the state underneath moves.
        rep("enrolled", "E-held", 6, referral_id=r["held"]),
        # A fee with an already-applied stage; then a report the lifecycle refuses.
        rep("enrolled", "E-fee", 7, referral_id=r["fee"], fee_amount=1_000, fee_currency="INR"),
        rep("enrolled", "E-bad", 7, referral_id=r["fee"], fee_amount=-1, fee_currency="INR"),
        # One applicant, two referrals: matched one at a time.
        rep("application_submitted", "A-twin", 8, email=w.emails["twin"], phone=w.emails["twin_phone"]),
        rep("enrolled", "E-twin", 9, email=w.emails["twin"], phone=w.emails["twin_phone"]),
    ]


def norm(w: World, results: list[OutcomeResult]) -> list[tuple[Any, ...]]:
    names = {v: k for k, v in w.refs.items()}
    return [(r.status, names.get(r.referral_id, r.referral_id), r.state, r.reason) for r in results]


async def footprint(runtime: Runtime, w: World) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, rid in sorted(w.refs.items()):
        [ref] = await sql(
            runtime,
            "SELECT state, held_from_state, fee_amount, fee_currency, applied_at, enrolled_at, closed_at"
            " FROM referrals WHERE id = :r",
            r=rid,
        )
        history = await sql(
            runtime,
            "SELECT from_state, to_state, reason, occurred_at, actor_type FROM referral_events"
            " WHERE referral_id = :r AND actor_type = 'partner' ORDER BY id",
            r=rid,
        )
        audit = await sql(
            runtime,
            "SELECT action, before, after FROM audit_log WHERE target_id = :r AND actor_type = 'partner'",
            r=str(rid),
        )
        audit.sort(key=repr)  # the log may be kept in several chains
        events = await sql(
            runtime,
            "SELECT topic, payload->>'from_state' AS f, payload->>'to_state' AS t, payload->>'reason' AS why,"
            " payload->>'at' AS at FROM outbox_events WHERE payload->>'referral_id' = :r"
            " AND payload->>'reason' LIKE '%partner%' ORDER BY id",
            r=str(rid),
        )
        rewards = await sql(
            runtime,
            "SELECT milestone, role, status, reached_at, reversal_requested_at IS NOT NULL AS rev"
            " FROM rewards WHERE referral_id = :r ORDER BY milestone, role",
            r=rid,
        )
        receipts = await sql(
            runtime,
            "SELECT external_ref, kind, status, state, reason FROM partner_outcomes"
            " WHERE referral_id = :r ORDER BY external_ref, kind",
            r=rid,
        )
        out[label] = {
            "referral": ref,
            "history": history,
            "audit": audit,
            "events": events,
            "rewards": rewards,
            "receipts": receipts,
        }
    out["receipts"] = await sql(
        runtime,
        "SELECT external_ref, kind, status FROM partner_outcomes WHERE university_id = :u ORDER BY 1, 2",
        u=w.university_id,
    )
    return out


async def test_a_mixed_batch_equals_its_items_one_at_a_time(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, many = await build(client, runtime, admin), await build(client, runtime, admin)
    ctx = RequestContext(request_id="batch-test")

    singly = []
    for report in items(one):
        async with runtime.db.sessionmaker() as session, session.begin():
            singly.append(await apply_partner_outcome(session, runtime, report, ctx, actor_id=one.key_id))
    one_by_one: list[str] = []
    real_process = outcomes.process_claimed

    async def counted(session: Any, rt: Any, report: OutcomeReport, *args: Any) -> OutcomeResult:
        one_by_one.append(report.external_ref)
        return await real_process(session, rt, report, *args)

    with monkeypatch.context() as patch:
        patch.setattr(outcomes, "process_claimed", counted)
        async with runtime.db.sessionmaker() as session, session.begin():
            batched = await apply_partner_outcomes(session, runtime, items(many), ctx, actor_id=many.key_id)
    # Only the rare paths went item by item: the click, the two-referral applicant, and (since a
    # referral made on the way could match them) the reports that matched nothing.
    assert sorted(one_by_one) == ["A-else", "A-twin", "E-click", "E-twin", "E-unknown"]

    assert norm(many, batched) == norm(one, singly)
    statuses = [r.status for r in batched]
    assert statuses[:6] == ["applied", "stale", "duplicate", "not_found", "not_found", "not_found"]
    assert "refused" in statuses
    a, b = await footprint(runtime, one), await footprint(runtime, many)
    for label in one.refs:
        for part in a[label]:
            assert b[label][part] == a[label][part], (label, part)
    assert b["receipts"] == a["receipts"]

    # Sent again, the whole batch answers from its receipts, and nothing moves.
    async with runtime.db.sessionmaker() as session, session.begin():
        again = await apply_partner_outcomes(session, runtime, items(many), ctx, actor_id=many.key_id)
    async with runtime.db.sessionmaker() as session, session.begin():
        again_one = [
            await apply_partner_outcome(session, runtime, report, ctx, actor_id=one.key_id)
            for report in items(one)
        ]
    assert norm(many, again) == norm(one, again_one)
    assert await footprint(runtime, many) == b
