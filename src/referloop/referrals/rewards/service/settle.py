"""Releasing rewards, and taking them back when an enrolment is cancelled.

- Release (after the hold): the pending amount moves to the member's available balance; then any
  receivable the member owes is settled from it at once.
- Reversal inside the hold: the pending amount is voided back to the program's reward expense, and
  the campaign budget and the referrer's caps are given back.
- Reversal after release (clawback): what the member has available is taken at once, up to the
  reward; the rest becomes a receivable (`receivables` scoped to the member: its balance is minus
  what they owe), which their next released rewards settle. The available balance never goes below
  zero (the ledger's guard), and a clawed-back reward does not return budget (it may never be
  recovered in full).

Money moves for one member under a per-member advisory lock, taken after the referral and reward
rows and before any ledger row, so that two releases or a release and a clawback of one member
never both judge the same receivable."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from referloop import ledger
from referloop.core.db import utcnow
from referloop.referrals.lifecycle.models import ReferralState
from referloop.referrals.lifecycle.service import states
from referloop.referrals.rewards.models import Milestone, RewardRole, RewardStatus, SkipReason
from referloop.referrals.rewards.service import budget, events
from referloop.referrals.rewards.service.grant import lock_for_work

_LOCK_NAMESPACE = 0x52574D  # "RWM"
_MOVE_ATTEMPTS = 3


async def lock_member_money(session: AsyncSession, member_id: uuid.UUID) -> None:
    key = (int.from_bytes(member_id.bytes[:8], "big", signed=True) ^ _LOCK_NAMESPACE) or 1
    await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def receivables(member_id: uuid.UUID) -> ledger.AccountRef:
    return ledger.platform_account(ledger.AccountCode.receivables, str(member_id))


async def owed_by(session: AsyncSession, member_id: uuid.UUID, currency: str) -> int:
    """What the member owes back from clawbacks (0 when nothing)."""
    return max(
        0, -await ledger.platform_balance(session, ledger.AccountCode.receivables, currency, str(member_id))
    )


async def _take_available(
    session: AsyncSession,
    *,
    member_id: uuid.UUID,
    currency: str,
    up_to: int,
    destination: ledger.AccountRef,
    entry_type: str,
    idempotency_key: str,
    reward_id: uuid.UUID,
) -> int:
    """Move min(up_to, available) from the member to `destination`; returns the amount. A withdrawal
    may reserve money between the read and the move: the ledger refuses then, and we read again."""
    for _ in range(_MOVE_ATTEMPTS):
        available = (await ledger.balance_of(session, member_id, currency)).available
        take = min(up_to, available)
        if take <= 0:
            return 0
        savepoint = await session.begin_nested()
        try:
            await ledger.move(
                session,
                entry_type=entry_type,
                source=ledger.member_account(member_id),
                destination=destination,
                amount=take,
                currency=currency,
                idempotency_key=idempotency_key,
                reference_type="referral_reward",
                reference_id=reward_id,
            )
        except ledger.InsufficientFunds:
            await savepoint.rollback()
            continue
        await savepoint.commit()
        return take
    return 0


async def settle_receivable(
    session: AsyncSession, member_id: uuid.UUID, currency: str, *, key: str, reward_id: uuid.UUID
) -> int:
    """Pay what the member owes from their available balance, as far as it goes (lock held)."""
    owed = await owed_by(session, member_id, currency)
    if owed <= 0:
        return 0
    return await _take_available(
        session,
        member_id=member_id,
        currency=currency,
        up_to=owed,
        destination=receivables(member_id),
        entry_type="referral.receivable_settled",
        idempotency_key=key,
        reward_id=reward_id,
    )


async def release(
    session: AsyncSession, reward_id: uuid.UUID, *, now: datetime | None = None, skip_locked: bool = False
) -> str | None:
    """Release one reward whose hold is over. Returns "released", "held", or None (nothing to do)."""
    locked = await lock_for_work(session, reward_id, skip_locked=skip_locked)
    if locked is None:
        return None
    referral, reward = locked
    now = now or utcnow()
    if (
        reward.status != RewardStatus.pending.value
        or reward.reversal_requested_at is not None
        or reward.release_at is None
        or reward.release_at > now
    ):
        return None
    if referral.state == ReferralState.fraud_hold.value:
        return "held"
    assert reward.member_id is not None and reward.ledger_transfer_id is not None
    await lock_member_money(session, reward.member_id)
    await ledger.post_pending(
        session,
        reward.ledger_transfer_id,
        entry_type="referral.reward_released",
        metadata={"reward_id": str(reward.id)},
    )
    await settle_receivable(
        session, reward.member_id, reward.currency, key=f"reward:{reward.id}:settle", reward_id=reward.id
    )
    reward.status = RewardStatus.released.value
    reward.released_at = utcnow()
    reward.updated_at = reward.released_at
    await session.flush()
    await events.emit(session, events.RELEASED_TOPIC, reward, referral, reward.released_at)
    if (
        reward.role == RewardRole.referrer.value
        and reward.milestone == Milestone.enrolled.value
        and states.underlying_state(referral) is ReferralState.enrolled
    ):
        await states.transition(
            session,
            referral,
            ReferralState.rewarded,
            actor=states.SYSTEM,
            reason="the enrolment reward was released",
        )
    return RewardStatus.released.value


async def reverse(session: AsyncSession, reward_id: uuid.UUID, *, skip_locked: bool = False) -> str | None:
    """Take back one reward whose enrolment was cancelled. Returns the reward's new status."""
    locked = await lock_for_work(session, reward_id, skip_locked=skip_locked)
    if locked is None:
        return None
    referral, reward = locked
    if reward.reversal_requested_at is None:
        return None
    now = utcnow()
    if reward.status == RewardStatus.queued.value:
        reward.status = RewardStatus.skipped.value
        reward.reason = SkipReason.enrolment_cancelled.value
    elif reward.status == RewardStatus.pending.value:
        assert reward.ledger_transfer_id is not None and reward.amount is not None
        await ledger.void_pending(
            session,
            reward.ledger_transfer_id,
            entry_type="referral.reward_voided",
            metadata={"reward_id": str(reward.id), "reason": "enrolment cancelled"},
        )
        for charge in budget.counter_charges(reward.charged_counters):
            await budget.unbump_counter(
                session,
                campaign_id=reward.campaign_id,
                member_id=reward.referrer_id,
                counter=charge["counter"],
                period_start=datetime.fromisoformat(charge["period_start"]),
                delta=int(charge["delta"]),
            )
        if budget.charged_to_budget(reward.charged_counters):
            await budget.refund_budget(session, reward.campaign_id, reward.amount)  # the budget row last
        reward.status = RewardStatus.voided.value
    elif reward.status == RewardStatus.released.value:
        assert reward.member_id is not None and reward.amount is not None
        await lock_member_money(session, reward.member_id)
        expense = ledger.platform_account(ledger.AccountCode.reward_expense, str(reward.program_id))
        taken = await _take_available(
            session,
            member_id=reward.member_id,
            currency=reward.currency,
            up_to=reward.amount,
            destination=expense,
            entry_type="referral.reward_clawed_back",
            idempotency_key=f"reward:{reward.id}:clawback",
            reward_id=reward.id,
        )
        rest = reward.amount - taken
        if rest > 0:
            # The platform books back its expense and records the member's debt for the rest.
            await ledger.move(
                session,
                entry_type="referral.reward_receivable",
                source=receivables(reward.member_id),
                destination=expense,
                amount=rest,
                currency=reward.currency,
                idempotency_key=f"reward:{reward.id}:receivable",
                reference_type="referral_reward",
                reference_id=reward.id,
            )
        reward.status = RewardStatus.clawed_back.value
        reward.clawed_back_amount = taken
        reward.receivable_amount = rest
    else:
        return None
    reward.reversed_at = now
    reward.updated_at = now
    await session.flush()
    if reward.status != RewardStatus.skipped.value:
        await events.emit(session, events.REVERSED_TOPIC, reward, referral, now)
    return reward.status
