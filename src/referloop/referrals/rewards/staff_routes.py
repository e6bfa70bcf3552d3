"""Staff (admin) routes: a campaign's reward rules and its budget. Every change is audited."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request, status
from fastapi.responses import JSONResponse

from referloop.core.deps import ContextDep, ReadSession, WriteSession
from referloop.core.errors import problem_responses
from referloop.core.idempotency import (
    idempotency_key_header,
    member_scope,
    request_fingerprint,
    run_idempotent,
)
from referloop.identity.deps import AdminStaff
from referloop.referrals.rewards.schemas import BudgetOut, RuleCreate, RuleList, RuleOut, RuleUpdate
from referloop.referrals.rewards.service import rules

router = APIRouter(prefix="/v1/staff", tags=["staff: rewards"], responses=problem_responses(401, 403))

IdempotencyKey = Annotated[str, Depends(idempotency_key_header)]


@router.get(
    "/campaigns/{campaign_id}/reward-rules", response_model=RuleList, responses=problem_responses(404)
)
async def list_rules(campaign_id: uuid.UUID, _: AdminStaff, session: ReadSession) -> RuleList:
    found, campaign = await rules.list_rules(session, campaign_id)
    return RuleList(items=[rules.rule_out(r, campaign.currency) for r in found])


@router.post(
    "/campaigns/{campaign_id}/reward-rules",
    status_code=status.HTTP_201_CREATED,
    response_model=RuleOut,
    responses=problem_responses(404, 409, 422),
)
async def create_rule(
    campaign_id: uuid.UUID,
    body: RuleCreate,
    request: Request,
    actor: AdminStaff,
    session: WriteSession,
    ctx: ContextDep,
    idempotency_key: IdempotencyKey,
) -> JSONResponse:
    """What the campaign pays one side (referrer or referee) at one milestone: a fixed amount (with
    optional tiers by the referrer's enrolments in a period) or a percentage of the reported fee.
    One live rule per campaign, milestone and side (409 otherwise)."""

    async def handler() -> tuple[int, RuleOut]:
        rule, campaign = await rules.create_rule(session, actor, campaign_id, body, ctx)
        return 201, rules.rule_out(rule, campaign.currency)

    return await run_idempotent(
        session,
        scope=member_scope("rewards.rules", actor.user_id),
        key=idempotency_key,
        fingerprint=request_fingerprint(request, body),
        handler=handler,
    )


@router.put("/reward-rules/{rule_id}", response_model=RuleOut, responses=problem_responses(404, 422))
async def update_rule(
    rule_id: uuid.UUID, body: RuleUpdate, actor: AdminStaff, session: WriteSession, ctx: ContextDep
) -> RuleOut:
    """Replace a rule's terms. A reward is decided when it is granted, so the new terms apply to every
    reward not granted yet: milestones reached from now on, and rewards still queued (those of a
    referral on a fraud hold, or waiting for the worker). Granted rewards keep theirs."""
    rule, campaign = await rules.update_rule(session, actor, rule_id, body, ctx)
    return rules.rule_out(rule, campaign.currency)


@router.delete(
    "/reward-rules/{rule_id}", status_code=status.HTTP_204_NO_CONTENT, responses=problem_responses(404)
)
async def withdraw_rule(
    rule_id: uuid.UUID, actor: AdminStaff, session: WriteSession, ctx: ContextDep
) -> None:
    """Stop paying this reward: rewards not granted yet are skipped (`rule_withdrawn`)."""
    await rules.withdraw_rule(session, actor, rule_id, ctx)


@router.get("/campaigns/{campaign_id}/budget", response_model=BudgetOut, responses=problem_responses(404))
async def campaign_budget(campaign_id: uuid.UUID, _: AdminStaff, session: ReadSession) -> BudgetOut:
    """What the campaign has paid (pending or released) against its total."""
    return await rules.budget_view(session, campaign_id)
