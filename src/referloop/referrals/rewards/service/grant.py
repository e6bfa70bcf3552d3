"""Granting a queued reward: compute the amount, pass the caps and the budget, earn it pending.

One reward per transaction, locks always in this order: the referral row, the reward row, the
referrer's counters, the ledger's rows (one entry), the campaign's budget row. Every grant takes
them in that order and holds at most one ledger entry's rows, so grants never deadlock each other,
and the hot budget row is held only from its update to the commit. A campaign without a total
budget has no budget row to guard: its grants do not touch it (see `budget`).

Amounts (integer minor units, never a float):
- fixed: the rule's `amount`, or the amount of the tier the referrer's enrolment falls in;
- percent: `fee * percent_bps // 10000`, rounded down to the minor unit (we never pay a fraction),
  then capped at `max_amount`. The fee is the one the partner reported for the referral; if none was
  reported, the program's listed fee. A fee in another currency than the campaign's pays nothing
  (reason `fee_currency_mismatch`): amounts are never converted.
Tiers count the referrer's enrolments in the rule's period (this one included), in the order the
worker grants them. A reward either passes every cap whole or is skipped with the reason: a cap is
never paid in part."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from referloop import ledger
from referloop.core.db import utcnow
from referloop.referrals.lifecycle.models import Referral, ReferralState
from referloop.referrals.models import Campaign, Program
from referloop.referrals.rewards.models import (
    Milestone,
    Reward,
    RewardRole,
    RewardRule,
    RewardStatus,
    RuleKind,
    SkipReason,
)
from referloop.referrals.rewards.service import budget, events

BPS = 10_000


@dataclass(frozen=True, slots=True)
class Amount:
    amount: int | None
    skip: SkipReason | None
    basis: str


def tier_for(tiers: list[dict[str, Any]], n: int) -> dict[str, Any] | None:
    chosen = None
    for tier in sorted(tiers, key=lambda t: int(t["from"])):
        if int(tier["from"]) <= n:
            chosen = tier
    return chosen


def compute_amount(
    rule: RewardRule,
    *,
    currency: str,
    fee_amount: int | None,
    fee_currency: str | None,
    enrolment_number: int | None,
) -> Amount:
    """What `rule` pays (see the module doc); `enrolment_number` is the referrer's n-th enrolment in
    the rule's period when the rule has tiers."""
    tier = tier_for(rule.tiers, enrolment_number) if rule.tiers and enrolment_number else None
    where = f"tier from enrolment {tier['from']}" if tier else "base rule"
    if rule.kind == RuleKind.fixed.value:
        amount = int(tier["amount"]) if tier else int(rule.amount or 0)
        basis = f"fixed ({where})"
    else:
        bps = int(tier["percent_bps"]) if tier else int(rule.percent_bps or 0)
        if fee_amount is None or fee_currency is None:
            return Amount(None, SkipReason.no_fee, "no fee")
        if fee_currency != currency:
            return Amount(None, SkipReason.fee_currency_mismatch, f"fee in {fee_currency}")
        amount = fee_amount * bps // BPS  # rounded down to the minor unit
        basis = f"{bps / 100:g} % of {fee_amount} ({where})"
        if rule.max_amount is not None and amount > rule.max_amount:
            amount = rule.max_amount
            basis += f", capped at {rule.max_amount}"
    if amount <= 0:
        return Amount(None, SkipReason.zero_amount, basis)
    return Amount(amount, None, basis[:200])


async def lock_for_work(
    session: AsyncSession, reward_id: uuid.UUID, *, skip_locked: bool
) -> tuple[Referral, Reward] | None:
    """Lock the reward's referral, then the reward. With `skip_locked`, None when another
    transaction holds either (a worker moves on to other work)."""
    found = await _lock_with_terms(session, reward_id, skip_locked=skip_locked)
    return (found.referral, found.reward) if found is not None else None


@dataclass(frozen=True, slots=True)
class _Locked:
    referral: Referral
    reward: Reward
    rule: RewardRule
    campaign: Campaign
    program_fee: tuple[int | None, str | None]


def with_terms() -> Select[Referral, Reward, RewardRule, Campaign, int, str]:
    """Rewards with their referral, rule, campaign and the program's listed fee (amount, currency):
    what a grant decides on, for one reward or a bulk batch."""
    return (
        select(Referral, Reward, RewardRule, Campaign, Program.fee_amount, Program.fee_currency)
        .select_from(Referral)
        .join(Reward, Reward.referral_id == Referral.id)
        .join(RewardRule, RewardRule.id == Reward.rule_id)
        .join(Campaign, Campaign.id == RewardRule.campaign_id)
        .outerjoin(Program, Program.id == Reward.program_id)
    )


async def _lock_with_terms(
    session: AsyncSession, reward_id: uuid.UUID, *, skip_locked: bool
) -> _Locked | None:
    """One statement: lock the referral, then the reward (`FOR UPDATE OF` takes them in that
    order), and read the rule, its campaign and the program's listed fee alongside."""
    row = (
        await session.execute(
            with_terms()
            .where(Reward.id == reward_id)
            .with_for_update(of=[Referral, Reward], skip_locked=skip_locked)
            .execution_options(populate_existing=True)
        )
    ).first()
    if row is None:
        return None
    return _Locked(row[0], row[1], row[2], row[3], (row[4], row[5]))


def _skip(reward: Reward, reason: SkipReason, amount: int | None = None, basis: str | None = None) -> str:
    reward.status = RewardStatus.skipped.value
    reward.reason = reason.value
    reward.amount = amount
    reward.basis = basis
    reward.updated_at = utcnow()
    return reason.value


def fee_of(referral: Referral, program_fee: tuple[int | None, str | None]) -> tuple[int | None, str | None]:
    """The fee the partner reported, else the program's listed fee."""
    if referral.fee_amount is not None and referral.fee_currency:
        return referral.fee_amount, referral.fee_currency
    return program_fee


def recipient_of(reward: Reward, referral: Referral) -> uuid.UUID | None:
    """Who a reward pays: the referrer, or the referee once they have an account."""
    return referral.member_id if reward.role == RewardRole.referrer.value else referral.referee_id


def tier_counter(reward: Reward, rule: RewardRule) -> tuple[str, str] | None:
    """The (counter, period) a tiered referrer reward for an enrolment counts in, else None."""
    if (
        rule.tiers
        and reward.role == RewardRole.referrer.value
        and reward.milestone == Milestone.enrolled.value
    ):
        period = rule.period or "month"
        return f"enrolments:{period}", period
    return None


def cap_checks(
    reward: Reward, rule: RewardRule, campaign: Campaign, amount: int
) -> list[tuple[str, str, int, int, SkipReason]]:
    """The referrer's caps that a grant of `amount` charges: (counter, period, delta, limit, reason)
    for the rule's count per period and the campaign's amount per period. One grant or a bulk batch."""
    checks: list[tuple[str, str, int, int, SkipReason]] = []
    if rule.max_per_referrer is not None and rule.period:
        checks.append((f"rule:{rule.id}", rule.period, 1, rule.max_per_referrer, SkipReason.rule_cap_reached))
    if (
        reward.role == RewardRole.referrer.value
        and campaign.per_referrer_amount is not None
        and campaign.per_referrer_period
    ):
        checks.append(
            (
                f"spend:{campaign.per_referrer_period}",
                campaign.per_referrer_period,
                amount,
                campaign.per_referrer_amount,
                SkipReason.referrer_cap_reached,
            )
        )
    return checks


async def _charge_counters(
    session: AsyncSession,
    reward: Reward,
    rule: RewardRule,
    campaign: Campaign,
    amount: int,
) -> tuple[list[dict[str, Any]], SkipReason | None]:
    """The referrer's caps: the rule's count per period, the campaign's amount per period."""
    charged: list[dict[str, Any]] = []
    checks = cap_checks(reward, rule, campaign, amount)
    for counter, period, delta, limit, reason in sorted(checks):  # a fixed lock order
        start = budget.period_start(period, reward.reached_at)
        value = await budget.bump_counter(
            session,
            campaign_id=campaign.id,
            member_id=reward.referrer_id,
            counter=counter,
            period_start=start,
            delta=delta,
            limit=limit,
        )
        if value is None:
            return charged, reason
        charged.append({"counter": counter, "period_start": start.isoformat(), "delta": delta})
    return charged, None


async def grant(session: AsyncSession, reward_id: uuid.UUID, *, skip_locked: bool = False) -> str | None:
    """Grant one queued reward in the caller's transaction. Returns what happened ("pending", a
    skip reason, "held" for a referral under fraud hold), or None when there was nothing to do."""
    locked = await _lock_with_terms(session, reward_id, skip_locked=skip_locked)
    if locked is None:
        return None
    referral, reward, rule, campaign = locked.referral, locked.reward, locked.rule, locked.campaign
    if reward.status != RewardStatus.queued.value:
        return None
    if referral.state == ReferralState.fraud_hold.value:
        return "held"
    now = utcnow()
    if reward.reversal_requested_at is not None:
        reward.reversed_at = now
        return _skip(reward, SkipReason.enrolment_cancelled)
    if rule.deleted_at is not None:
        return _skip(reward, SkipReason.rule_withdrawn)
    recipient = recipient_of(reward, referral)
    if recipient is None:
        return _skip(reward, SkipReason.referee_not_registered)
    reward.member_id = recipient

    enrolment_number = None
    tier = tier_counter(reward, rule)
    if tier is not None:
        # Counted whether or not a cap later refuses the reward: it is the referrer's n-th enrolment.
        counter, period = tier
        enrolment_number = await budget.bump_counter(
            session,
            campaign_id=campaign.id,
            member_id=reward.referrer_id,
            counter=counter,
            period_start=budget.period_start(period, reward.reached_at),
            delta=1,
            limit=None,
        )
    fee_amount, fee_currency = (
        fee_of(referral, locked.program_fee) if rule.kind == RuleKind.percent.value else (None, None)
    )
    computed = compute_amount(
        rule,
        currency=reward.currency,
        fee_amount=fee_amount,
        fee_currency=fee_currency,
        enrolment_number=enrolment_number,
    )
    if computed.skip is not None or computed.amount is None:
        return _skip(reward, computed.skip or SkipReason.zero_amount, basis=computed.basis)
    amount = computed.amount

    # A cheap early answer for a spent budget (no lock); the guarded statement below decides.
    total = (await budget.hold_totals(session, {campaign.id}))[campaign.id]
    if total is not None and await budget.budget_spent_seeded(session, campaign.id) + amount > total:
        return _skip(reward, SkipReason.budget_exhausted, amount, computed.basis)

    # A savepoint takes back what passed when a later guard refuses: needed only when more than
    # one guard can refuse (the budget after the ledger entry, or two counters).
    guards = (total is not None) + (rule.max_per_referrer is not None and rule.period is not None)
    guards += reward.role == RewardRole.referrer.value and campaign.per_referrer_amount is not None
    savepoint = await session.begin_nested() if guards > 1 or total is not None else None
    charged, refused = await _charge_counters(session, reward, rule, campaign, amount)
    if refused is not None:
        if savepoint is not None:
            await savepoint.rollback()
        return _skip(reward, refused, amount, computed.basis)
    earned = await ledger.earn_pending(
        session,
        member_id=recipient,
        amount=amount,
        currency=reward.currency,
        source=ledger.platform_account(ledger.AccountCode.reward_expense, str(reward.program_id)),
        idempotency_key=f"reward:{reward.referral_id}:{reward.milestone}:{reward.role}",
        entry_type="referral.reward",
        reference_type="referral_reward",
        reference_id=reward.id,
        metadata={"referral_id": str(reward.referral_id), "milestone": reward.milestone, "role": reward.role},
    )
    if total is None:
        # No total to guard: the campaign's budget row is left alone (every grant updating that one
        # row serialised them all). The mark tells a later void there is nothing to refund.
        charged.append(budget.UNCHARGED_MARK)
    elif not await budget.spend_budget(session, campaign.id, amount, total):
        assert savepoint is not None
        await savepoint.rollback()  # takes the ledger entry and the counters back with it
        return _skip(reward, SkipReason.budget_exhausted, amount, computed.basis)
    if savepoint is not None:
        await savepoint.commit()

    reward.status = RewardStatus.pending.value
    reward.amount = amount
    reward.basis = computed.basis
    reward.ledger_transfer_id = earned.transfer.id
    reward.charged_counters = charged
    # The hold runs from the milestone (e.g. 30 days after the enrolment the partner reported).
    reward.release_at = release_moment(reward.reached_at, rule.hold_days)
    reward.updated_at = now
    await session.flush()
    await events.emit(session, events.PENDING_TOPIC, reward, referral, now)
    return RewardStatus.pending.value


def release_moment(reached_at: datetime, hold_days: int) -> datetime:
    return reached_at + timedelta(days=hold_days)
