"""What finance staff do: approve, reject, record the outcome of a manual payout, retry a failed one."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from referloop import ledger
from referloop.config import PayoutProviderName
from referloop.core.db import utcnow
from referloop.identity.errors import refuse_own_case
from referloop.payouts.providers import ManualProvider
from referloop.payouts.withdrawals.errors import (
    IllegalTransition,
    InsufficientBalance,
    PaidWithOtherReference,
    TooManyAttempts,
    WrongProvider,
)
from referloop.payouts.withdrawals.models import ALLOWED, Withdrawal, WithdrawalState
from referloop.payouts.withdrawals.service import money, policy
from referloop.payouts.withdrawals.service.payouts import apply_report
from referloop.payouts.withdrawals.service.transitions import Actor, ensure_allowed, lock, transition
from referloop.runtime import Runtime

# The attempt is part of the provider key (`<32 hex>-<attempt>`, at most 36 characters).
MAX_ATTEMPTS = 99


async def approve(session: AsyncSession, withdrawal_id: uuid.UUID, actor: Actor) -> Withdrawal:
    w = await lock(session, withdrawal_id)
    if w.state == WithdrawalState.approved.value:
        return w  # approved already (by someone else, or automatically): the same answer
    if w.state == WithdrawalState.failed.value:
        # failed -> approved is a retry, which holds the money again: see `retry`.
        raise IllegalTransition(w.state, "approved (use retry for a failed withdrawal)", ["approved (retry)"])
    ensure_allowed(w, WithdrawalState.approved)
    refuse_own_case(actor.id, w.member_id, "approve your own withdrawal")
    w.approved_by = actor.id
    await transition(session, w, WithdrawalState.approved, actor)
    return w


async def reject(session: AsyncSession, withdrawal_id: uuid.UUID, reason: str, actor: Actor) -> Withdrawal:
    w = await lock(session, withdrawal_id)
    if w.state == WithdrawalState.rejected.value:
        return w
    ensure_allowed(w, WithdrawalState.rejected)
    await money.release(session, w, "rejected")
    w.reason = reason
    await transition(session, w, WithdrawalState.rejected, actor, details={"reason": reason})
    return w


def _manual(w: Withdrawal) -> ManualProvider:
    if w.provider != PayoutProviderName.manual.value:
        raise WrongProvider(
            f"This withdrawal is paid through {w.provider}; its outcome comes from the provider "
            "(webhooks, `referloop payouts sync`), not from staff."
        )
    return ManualProvider()


async def mark_paid(
    session: AsyncSession, rt: Runtime, withdrawal_id: uuid.UUID, reference: str, actor: Actor
) -> Withdrawal:
    """Staff paid a manual withdrawal by hand; `reference` is what their bank gave them."""
    w = await lock(session, withdrawal_id)
    provider = _manual(w)
    if w.state == WithdrawalState.paid.value:
        if w.bank_reference == reference.strip():
            return w
        raise PaidWithOtherReference(
            f"This withdrawal was marked paid with reference {w.bank_reference}.",
            bank_reference=w.bank_reference,
        )
    ensure_allowed(w, WithdrawalState.paid)
    refuse_own_case(actor.id, w.member_id, "mark your own withdrawal paid")
    report = provider.record_paid(
        w.provider_payout_id or "manual_" + w.provider_key,
        amount=w.net_amount,
        currency=w.currency,
        reference=reference,
    )
    await apply_report(session, rt, w, report, actor)
    return w


async def mark_failed(
    session: AsyncSession, rt: Runtime, withdrawal_id: uuid.UUID, reason: str, actor: Actor
) -> Withdrawal:
    """Staff could not pay a manual withdrawal; the held amount goes back to the member."""
    w = await lock(session, withdrawal_id)
    provider = _manual(w)
    if w.state == WithdrawalState.failed.value:
        return w
    ensure_allowed(w, WithdrawalState.failed)
    report = provider.record_failed(
        w.provider_payout_id or "manual_" + w.provider_key,
        amount=w.net_amount,
        currency=w.currency,
        reason=reason,
    )
    await apply_report(session, rt, w, report, actor)
    return w


async def retry(
    session: AsyncSession,
    rt: Runtime,
    withdrawal_id: uuid.UUID,
    actor: Actor,
    *,
    override_limits: bool = False,
) -> Withdrawal:
    """Try a failed payout again: hold the amount again and send a new attempt (a new provider key:
    the provider has recorded the first one as failed). A failed withdrawal stopped counting towards
    the member's daily and monthly limits, which later requests may have used: it must fit them
    again, unless staff override them (recorded in the transition's audit)."""
    w = await lock(session, withdrawal_id)
    if w.state != WithdrawalState.failed.value:
        raise IllegalTransition(
            w.state,
            "approved (a retry is for failed withdrawals)",
            (s.value for s in ALLOWED[WithdrawalState(w.state)]),
        )
    refuse_own_case(actor.id, w.member_id, "retry your own withdrawal")
    if w.attempt >= MAX_ATTEMPTS:
        raise TooManyAttempts(f"This withdrawal was attempted {w.attempt} times; ask the member for another.")
    if not override_limits:
        await policy.lock_member_withdrawals(session, w.member_id)
        rules = policy.policy_for(rt.settings, w.currency)
        await policy.check_limits(
            session, rules, member_id=w.member_id, amount=w.amount, currency=w.currency, now=utcnow()
        )
    attempt = w.attempt + 1
    try:
        transfer_id = await money.hold(
            session,
            withdrawal_id=w.id,
            member_id=w.member_id,
            amount=w.amount,
            currency=w.currency,
            attempt=attempt,
        )
    except ledger.InsufficientFunds as exc:
        balance = await ledger.balance_of(session, w.member_id, w.currency)
        raise InsufficientBalance(
            f"The member's available balance ({balance.available}) no longer covers {w.amount}.",
            available=balance.available,
        ) from exc
    previous = {"previous_payout_id": w.provider_payout_id, "previous_failure_code": w.failure_code}
    w.attempt = attempt
    w.hold_transfer_id = transfer_id
    w.provider_payout_id = None
    w.provider_status = None
    w.provider_raw_status = None
    w.provider_fee = None
    w.bank_reference = None
    w.failure_code = None
    w.failure_message = None
    w.last_error = None
    w.approved_by = actor.id
    details = {"retry": True, **previous, **({"limits_overridden": True} if override_limits else {})}
    await transition(session, w, WithdrawalState.approved, actor, details=details)
    return w
