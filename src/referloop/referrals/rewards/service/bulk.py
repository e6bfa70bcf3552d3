"""Granting queued rewards many at a time: the same decisions as `grant.grant`, one reward after
another in the order the milestones were reached, in a constant number of statements.

1. Claim up to `limit` queued rewards, locking each one's referral and then the reward (`FOR UPDATE
   OF referrals, rewards SKIP LOCKED`, so workers share the queue), with their rule, campaign and
   the program's listed fee.
2. The referrers' counters (tiers and caps) are created when missing and locked, all of them, in
   key order; the caps are then checked in Python against the locked values, reward by reward, in
   order, so a cap is exact and never paid in part.
3. The ledger entries are written by `ledger.earn_pending_many` (accounts created, balance rows
   locked in id order, every entry once by its idempotency key).
4. Last, each campaign with a total budget is charged the batch's sum in one guarded statement
   (the guard in SQL: the total is never passed). The amounts were chosen against the spent figure
   read at the start; should a concurrent grant have spent meanwhile so that the sum no longer fits,
   the statement refuses and `BudgetRace` is raised: the caller rolls the transaction back and
   grants those rewards one at a time (`grant.grant`).
5. The rewards, counters and `rewards.pending` events are written one statement each.

Locks are taken in the order `grant.grant` takes them (referral, reward, counters, ledger rows,
budget row), so bulk and single grants never deadlock one another. A referral under fraud hold is
not claimed (as `jobs.queued_rewards` does not list it)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from referloop import ledger
from referloop.core.db import raw_connection, utcnow
from referloop.core.ids import uuid7
from referloop.referrals.lifecycle.models import Referral, ReferralState
from referloop.referrals.models import Campaign
from referloop.referrals.rewards.models import (
    Reward,
    RewardRule,
    RewardStatus,
    RuleKind,
    SkipReason,
)
from referloop.referrals.rewards.service import budget, events
from referloop.referrals.rewards.service.grant import (
    cap_checks,
    compute_amount,
    fee_of,
    recipient_of,
    release_moment,
    tier_counter,
    with_terms,
)


class BudgetRace(Exception):
    """A campaign's budget no longer fits the batch's sum (a concurrent grant spent it)."""


@dataclass
class _Decision:
    reward: Reward
    referral: Referral
    status: str
    member_id: uuid.UUID | None = None
    amount: int | None = None
    basis: str | None = None
    reason: str | None = None
    charged: list[dict[str, Any]] = field(default_factory=list)
    release_at: datetime | None = None
    reversed_at: datetime | None = None
    transfer_id: uuid.UUID | None = None


CounterKey = tuple[uuid.UUID, uuid.UUID, str, datetime]  # campaign, member, counter, period start

_ENSURE_COUNTERS = """
INSERT INTO reward_counters (campaign_id, member_id, counter, period_start, value)
SELECT k.campaign_id, k.member_id, k.counter, k.period_start, 0
FROM unnest(CAST($1 AS uuid[]), CAST($2 AS uuid[]), CAST($3 AS text[]), CAST($4 AS timestamptz[]))
    AS k(campaign_id, member_id, counter, period_start)
ORDER BY 1, 2, 3, 4
ON CONFLICT DO NOTHING
"""
_LOCK_COUNTERS = """
SELECT c.campaign_id, c.member_id, c.counter, c.period_start, c.value FROM reward_counters c
JOIN unnest(CAST($1 AS uuid[]), CAST($2 AS uuid[]), CAST($3 AS text[]), CAST($4 AS timestamptz[]))
    AS k(campaign_id, member_id, counter, period_start)
  ON c.campaign_id = k.campaign_id AND c.member_id = k.member_id AND c.counter = k.counter
 AND c.period_start = k.period_start
ORDER BY 1, 2, 3, 4
FOR UPDATE OF c
"""
_WRITE_COUNTERS = """
UPDATE reward_counters c SET value = k.value
FROM unnest(CAST($1 AS uuid[]), CAST($2 AS uuid[]), CAST($3 AS text[]), CAST($4 AS timestamptz[]),
            CAST($5 AS bigint[])) AS k(campaign_id, member_id, counter, period_start, value)
WHERE c.campaign_id = k.campaign_id AND c.member_id = k.member_id AND c.counter = k.counter
  AND c.period_start = k.period_start
"""
# The budget guard for a batch: the sum is charged whole, or nothing is (no row back).
_SPEND_SUM = """
INSERT INTO campaign_budgets AS b (campaign_id, spent, rewards, updated_at)
SELECT CAST($1 AS uuid), CAST($2 AS bigint), CAST($3 AS integer), now()
WHERE CAST($2 AS bigint) <= CAST($4 AS bigint)
ON CONFLICT (campaign_id)
DO UPDATE SET spent = b.spent + EXCLUDED.spent, rewards = b.rewards + EXCLUDED.rewards, updated_at = now()
WHERE b.spent + EXCLUDED.spent <= CAST($4 AS bigint)
RETURNING spent
"""
_WRITE_REWARDS = """
UPDATE rewards w SET status = u.status, member_id = coalesce(u.member_id, w.member_id), amount = u.amount,
    basis = u.basis, reason = u.reason, ledger_transfer_id = u.transfer_id,
    charged_counters = CAST(u.charged AS jsonb), release_at = u.release_at,
    reversed_at = coalesce(u.reversed_at, w.reversed_at), updated_at = $1
FROM unnest(CAST($2 AS uuid[]), CAST($3 AS text[]), CAST($4 AS uuid[]), CAST($5 AS bigint[]),
            CAST($6 AS text[]), CAST($7 AS text[]), CAST($8 AS uuid[]), CAST($9 AS text[]),
            CAST($10 AS timestamptz[]), CAST($11 AS timestamptz[]))
    AS u(id, status, member_id, amount, basis, reason, transfer_id, charged, release_at, reversed_at)
WHERE w.id = u.id
"""
_EVENTS = """
INSERT INTO outbox_events (id, topic, payload)
SELECT e.id, $1, CAST(e.payload AS jsonb)
FROM unnest(CAST($2 AS uuid[]), CAST($3 AS text[])) AS e(id, payload)
"""


async def grant_many(
    session: AsyncSession, limit: int, referral_ids: Sequence[uuid.UUID] | None = None
) -> list[str]:
    """Grant up to `limit` queued rewards in the caller's transaction (see the module doc). Returns
    each claimed reward's outcome ("pending" or a skip reason); an empty list when none was free."""
    stmt = (
        with_terms()
        .where(Reward.status == RewardStatus.queued.value, Referral.state != ReferralState.fraud_hold.value)
        .order_by(Reward.reached_at, Reward.id)
        .limit(limit)
        .with_for_update(of=[Referral, Reward], skip_locked=True)
        .execution_options(populate_existing=True)
    )
    if referral_ids is not None:
        stmt = stmt.where(Reward.referral_id.in_(referral_ids))
    claimed = (await session.execute(stmt)).all()
    if not claimed:
        return []
    now = utcnow()

    # The counters every claimed reward may move, locked at once in key order.
    wanted: set[CounterKey] = set()
    for _referral, reward, rule, campaign, _, _ in claimed:
        for counter, period in _counters(reward, rule, campaign):
            start = budget.period_start(period, reward.reached_at)
            wanted.add((campaign.id, reward.referrer_id, counter, start))
    values: dict[CounterKey, int] = {}
    driver = await raw_connection(session)
    if wanted:
        keys = sorted(wanted)
        columns = [list(col) for col in zip(*keys, strict=True)]
        await driver.execute(_ENSURE_COUNTERS, *columns)
        for r in await driver.fetch(_LOCK_COUNTERS, *columns):
            values[(r["campaign_id"], r["member_id"], r["counter"], r["period_start"])] = int(r["value"])
    start_values = dict(values)
    totals = await budget.hold_totals(session, {row[3].id for row in claimed})

    spent: dict[uuid.UUID, int] = {}  # campaigns with a total: spent at the start + this batch
    batch_sum: dict[uuid.UUID, list[int]] = {}
    decisions: list[_Decision] = []
    for referral, reward, rule, campaign, fee_amount, fee_currency in claimed:
        d = _Decision(reward, referral, RewardStatus.skipped.value)
        decisions.append(d)
        if reward.reversal_requested_at is not None:
            d.reason, d.reversed_at = SkipReason.enrolment_cancelled.value, now
            continue
        if rule.deleted_at is not None:
            d.reason = SkipReason.rule_withdrawn.value
            continue
        recipient = recipient_of(reward, referral)
        if recipient is None:
            d.reason = SkipReason.referee_not_registered.value
            continue
        d.member_id = recipient
        enrolment_number = None
        tier = tier_counter(reward, rule)
        if tier is not None:
            counter, period = tier
            key = (
                campaign.id,
                reward.referrer_id,
                counter,
                budget.period_start(period, reward.reached_at),
            )
            values[key] += 1  # counted whether or not a cap later refuses the reward
            enrolment_number = values[key]
        fee = (
            fee_of(referral, (fee_amount, fee_currency))
            if rule.kind == RuleKind.percent.value
            else (None, None)
        )
        computed = compute_amount(
            rule,
            currency=reward.currency,
            fee_amount=fee[0],
            fee_currency=fee[1],
            enrolment_number=enrolment_number,
        )
        if computed.skip is not None or computed.amount is None:
            d.reason, d.basis = (computed.skip or SkipReason.zero_amount).value, computed.basis
            continue
        amount = computed.amount
        total = totals[campaign.id]
        if total is not None:
            if campaign.id not in spent:
                spent[campaign.id] = await budget.budget_spent_seeded(session, campaign.id)
            if spent[campaign.id] + amount > total:
                d.reason, d.amount, d.basis = SkipReason.budget_exhausted.value, amount, computed.basis
                continue
        refused = None
        charges: list[tuple[CounterKey, int, dict[str, Any]]] = []
        for counter, period, delta, cap, reason in cap_checks(reward, rule, campaign, amount):
            start = budget.period_start(period, reward.reached_at)
            key = (campaign.id, reward.referrer_id, counter, start)
            if delta > cap or values[key] + delta > cap:
                refused = reason
                break
            charges.append(
                (key, delta, {"counter": counter, "period_start": start.isoformat(), "delta": delta})
            )
        if refused is not None:
            d.reason, d.amount, d.basis = refused.value, amount, computed.basis
            continue
        for key, delta, _ in charges:
            values[key] += delta
        d.charged = [c for _, _, c in charges]
        if total is None:
            d.charged.append(budget.UNCHARGED_MARK)
        else:
            spent[campaign.id] += amount
            batch_sum.setdefault(campaign.id, [0, 0, total])
            batch_sum[campaign.id][0] += amount
            batch_sum[campaign.id][1] += 1
        d.status, d.amount, d.basis = RewardStatus.pending.value, amount, computed.basis
        d.release_at = release_moment(reward.reached_at, rule.hold_days)

    granted = [d for d in decisions if d.status == RewardStatus.pending.value]
    if granted:
        earned = await ledger.earn_pending_many(
            session,
            [
                ledger.Earning(
                    member_id=d.member_id,  # type: ignore[arg-type]
                    amount=d.amount,  # type: ignore[arg-type]
                    currency=d.reward.currency,
                    source=ledger.platform_account(
                        ledger.AccountCode.reward_expense, str(d.reward.program_id)
                    ),
                    idempotency_key=f"reward:{d.reward.referral_id}:{d.reward.milestone}:{d.reward.role}",
                    entry_type="referral.reward",
                    reference_type="referral_reward",
                    reference_id=d.reward.id,
                    metadata={
                        "referral_id": str(d.reward.referral_id),
                        "milestone": d.reward.milestone,
                        "role": d.reward.role,
                    },
                )
                for d in granted
            ],
        )
        for d, e in zip(granted, earned, strict=True):
            d.transfer_id = e.transfer.id
    for campaign_id in sorted(batch_sum):  # the budget rows last, in id order
        amount, count, total = batch_sum[campaign_id]
        if await driver.fetchval(_SPEND_SUM, campaign_id, amount, count, total) is None:
            raise BudgetRace(str(campaign_id))

    moved = [k for k in values if values[k] != start_values.get(k)]
    if moved:
        await driver.execute(
            _WRITE_COUNTERS, *[list(col) for col in zip(*moved, strict=True)], [values[k] for k in moved]
        )
    await driver.execute(
        _WRITE_REWARDS,
        now,
        [d.reward.id for d in decisions],
        [d.status for d in decisions],
        [d.member_id for d in decisions],
        [d.amount for d in decisions],
        [d.basis[:200] if d.basis else None for d in decisions],
        [d.reason for d in decisions],
        [d.transfer_id for d in decisions],
        [json.dumps(d.charged) for d in decisions],
        [d.release_at for d in decisions],
        [d.reversed_at for d in decisions],
    )
    if granted:
        await driver.execute(
            _EVENTS,
            events.PENDING_TOPIC,
            [uuid7() for _ in granted],
            [json.dumps(_event(d, now)) for d in granted],
        )
    return [d.status if d.status == RewardStatus.pending.value else str(d.reason) for d in decisions]


def _counters(reward: Reward, rule: RewardRule, campaign: Campaign) -> list[tuple[str, str]]:
    """Every counter a reward may move: its tier count, then its caps."""
    tier = tier_counter(reward, rule)
    out = [tier] if tier is not None else []
    out.extend((counter, period) for counter, period, _, _, _ in cap_checks(reward, rule, campaign, 0))
    return out


def _event(d: _Decision, at: datetime) -> dict[str, Any]:
    """The payload `events.emit` writes for a granted reward."""
    reward, referral = d.reward, d.referral
    return {
        "reward_id": str(reward.id),
        "referral_id": str(reward.referral_id),
        "member_id": str(d.member_id) if d.member_id else None,
        "role": reward.role,
        "milestone": reward.milestone,
        "amount": d.amount,
        "currency": reward.currency,
        "program_id": str(reward.program_id),
        "university_id": str(referral.university_id) if referral.university_id else None,
        "campaign_id": str(reward.campaign_id),
        "at": at.isoformat(),
    }
