"""Reward rules: staff (admin) create, change and withdraw them; every change is audited.

A rule applies to milestones reached while it is live. Withdrawing a rule leaves granted rewards
alone; rewards still queued under it are skipped (`rule_withdrawn`)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.compliance import audit
from referloop.core.context import RequestContext
from referloop.core.db import utcnow
from referloop.identity.service.sessions import Principal
from referloop.referrals.models import BudgetPeriod, Campaign
from referloop.referrals.rewards.errors import RewardRuleExists, RewardRuleInvalid, RewardRuleNotFound
from referloop.referrals.rewards.models import Milestone, RewardRole, RewardRule, RuleKind
from referloop.referrals.rewards.schemas import BudgetOut, RuleCreate, RuleOut, RuleUpdate, Tier
from referloop.referrals.rewards.service import budget
from referloop.referrals.schemas import Money
from referloop.referrals.service.campaigns import get_campaign

_FIELDS = ("kind", "amount", "percent_bps", "max_amount", "tiers", "period", "max_per_referrer", "hold_days")


def snapshot(rule: RewardRule) -> dict[str, Any]:
    return {
        "campaign_id": str(rule.campaign_id),
        "milestone": rule.milestone,
        "role": rule.role,
        **{f: getattr(rule, f) for f in _FIELDS},
    }


def _check_currency(campaign: Campaign, data: RuleCreate | RuleUpdate) -> None:
    monies = [data.amount, data.max_amount, *(t.amount for t in data.tiers)]
    if any(m is not None and m.currency != campaign.currency for m in monies):
        raise RewardRuleInvalid(f"Amounts must be in the campaign's currency ({campaign.currency}).")


def _check_tiers_allowed(milestone: str, role: str, data: RuleCreate | RuleUpdate) -> None:
    if data.tiers and (milestone != Milestone.enrolled.value or role != RewardRole.referrer.value):
        raise RewardRuleInvalid("Tiers count the referrer's enrolments: only referrer rules at `enrolled`.")


def _apply(rule: RewardRule, data: RuleCreate | RuleUpdate) -> None:
    rule.kind = data.kind.value
    rule.amount = data.amount.amount if data.amount else None
    rule.percent_bps = data.percent_bps
    rule.max_amount = data.max_amount.amount if data.max_amount else None
    rule.tiers = [
        {"from": t.from_, "amount": t.amount.amount}
        if t.amount is not None
        else {"from": t.from_, "percent_bps": t.percent_bps}
        for t in sorted(data.tiers, key=lambda t: t.from_)
    ]
    rule.period = data.period.value if data.period else None
    rule.max_per_referrer = data.max_per_referrer
    rule.hold_days = data.hold_days


def rule_out(rule: RewardRule, currency: str) -> RuleOut:
    def money(amount: int | None) -> Money | None:
        return Money(amount=amount, currency=currency) if amount is not None else None

    return RuleOut(
        id=rule.id,
        campaign_id=rule.campaign_id,
        milestone=Milestone(rule.milestone),
        role=RewardRole(rule.role),
        kind=RuleKind(rule.kind),
        amount=money(rule.amount),
        percent_bps=rule.percent_bps,
        max_amount=money(rule.max_amount),
        tiers=[
            Tier.model_validate(
                {"from": t["from"], "amount": money(t.get("amount")), "percent_bps": t.get("percent_bps")}
            )
            for t in rule.tiers
        ],
        period=BudgetPeriod(rule.period) if rule.period else None,
        max_per_referrer=rule.max_per_referrer,
        hold_days=rule.hold_days,
        created_at=rule.created_at,
        updated_at=rule.updated_at,
    )


async def create_rule(
    session: AsyncSession, actor: Principal, campaign_id: uuid.UUID, data: RuleCreate, ctx: RequestContext
) -> tuple[RewardRule, Campaign]:
    campaign = await get_campaign(session, campaign_id)
    _check_currency(campaign, data)
    _check_tiers_allowed(data.milestone.value, data.role.value, data)
    rule = RewardRule(campaign_id=campaign.id, milestone=data.milestone.value, role=data.role.value)
    _apply(rule, data)
    try:
        async with session.begin_nested():
            session.add(rule)
            await session.flush()
    except IntegrityError as exc:
        raise RewardRuleExists(
            f"This campaign already pays the {data.role.value} at {data.milestone.value}; change that rule."
        ) from exc
    await audit.record(
        session,
        action="rewards.rule_created",
        actor_id=actor.user_id,
        actor_type="staff",
        target_type="reward_rule",
        target_id=rule.id,
        after=snapshot(rule),
        ctx=ctx,
    )
    return rule, campaign


async def _live_rule(session: AsyncSession, rule_id: uuid.UUID) -> RewardRule:
    rule = await session.scalar(
        select(RewardRule).where(RewardRule.id == rule_id, RewardRule.deleted_at.is_(None)).with_for_update()
    )
    if rule is None:
        raise RewardRuleNotFound("No such reward rule.")
    return rule


async def update_rule(
    session: AsyncSession, actor: Principal, rule_id: uuid.UUID, data: RuleUpdate, ctx: RequestContext
) -> tuple[RewardRule, Campaign]:
    rule = await _live_rule(session, rule_id)
    campaign = await get_campaign(session, rule.campaign_id)
    _check_currency(campaign, data)
    _check_tiers_allowed(rule.milestone, rule.role, data)
    before = snapshot(rule)
    _apply(rule, data)
    rule.updated_at = utcnow()
    await session.flush()
    await audit.record(
        session,
        action="rewards.rule_updated",
        actor_id=actor.user_id,
        actor_type="staff",
        target_type="reward_rule",
        target_id=rule.id,
        before=before,
        after=snapshot(rule),
        ctx=ctx,
    )
    return rule, campaign


async def withdraw_rule(
    session: AsyncSession, actor: Principal, rule_id: uuid.UUID, ctx: RequestContext
) -> None:
    rule = await _live_rule(session, rule_id)
    rule.deleted_at = utcnow()
    await session.flush()
    await audit.record(
        session,
        action="rewards.rule_withdrawn",
        actor_id=actor.user_id,
        actor_type="staff",
        target_type="reward_rule",
        target_id=rule.id,
        before=snapshot(rule),
        ctx=ctx,
    )


async def list_rules(session: AsyncSession, campaign_id: uuid.UUID) -> tuple[list[RewardRule], Campaign]:
    campaign = await get_campaign(session, campaign_id)
    rules = await session.scalars(
        select(RewardRule)
        .where(RewardRule.campaign_id == campaign_id, RewardRule.deleted_at.is_(None))
        .order_by(RewardRule.milestone, RewardRule.role)
    )
    return list(rules), campaign


async def budget_view(session: AsyncSession, campaign_id: uuid.UUID) -> BudgetOut:
    campaign = await get_campaign(session, campaign_id)
    total = campaign.budget_total_amount
    if total is None:
        # No total: grants keep no budget row (see `budget`); the rewards say what was spent.
        spent, count = await budget.granted_totals(session, campaign.id)
    else:
        spent = await budget.budget_spent(session, campaign.id)
        count = await session.scalar(
            text("SELECT rewards FROM campaign_budgets WHERE campaign_id = :c"), {"c": campaign.id}
        )
    cur = campaign.currency
    return BudgetOut(
        campaign_id=campaign.id,
        budget_total=Money(amount=total, currency=cur) if total is not None else None,
        spent=Money(amount=spent, currency=cur),
        remaining=Money(amount=max(0, total - spent), currency=cur) if total is not None else None,
        rewards=int(count or 0),
    )
