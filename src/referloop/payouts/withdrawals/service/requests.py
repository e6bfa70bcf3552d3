"""What members do: ask for a withdrawal, and cancel one that has not gone to the provider yet."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from referloop import ledger
from referloop.core.context import RequestContext
from referloop.core.db import utcnow
from referloop.core.ids import uuid7
from referloop.identity.models import KycStatus
from referloop.identity.service.accounts import get_user
from referloop.payouts.methods import service as methods
from referloop.payouts.withdrawals.errors import InsufficientBalance, KycRequired, UnknownCurrency
from referloop.payouts.withdrawals.models import Withdrawal, WithdrawalState
from referloop.payouts.withdrawals.schemas import WithdrawalCreate
from referloop.payouts.withdrawals.service import money, policy
from referloop.payouts.withdrawals.service.transitions import (
    Actor,
    ensure_allowed,
    lock,
    record_created,
    transition,
)
from referloop.runtime import Runtime


async def create_withdrawal(
    session: AsyncSession,
    rt: Runtime,
    member_id: uuid.UUID,
    data: WithdrawalCreate,
    ctx: RequestContext,
    *,
    member_locked: bool = False,
) -> Withdrawal:
    """Check the request, hold the amount and record the withdrawal, all in the caller's transaction:
    a refusal at any step leaves nothing behind. `member_locked`: the caller already holds
    `policy.lock_member_withdrawals` in this transaction (the route takes it with the idempotency key)."""
    if not ledger.is_currency(data.currency):
        raise UnknownCurrency(f"{data.currency} is not an ISO 4217 currency code.")
    rules = policy.policy_for(rt.settings, data.currency)
    policy.check_amount(rules, data.amount, data.currency)
    fee = policy.fee_for(rules, data.amount)
    method = await methods.get_method(session, member_id, data.payout_method_id)
    now = utcnow()
    policy.check_method_usable(method.usable_from, now)
    provider = rt.settings.payout_provider
    policy.check_provider_pays(provider, method.kind, data.currency)
    if data.amount > rules.kyc_required_above:
        user = await get_user(session, member_id)
        if user.kyc_status != KycStatus.verified.value:
            raise KycRequired(
                f"Withdrawals above {rules.kyc_required_above} {data.currency} minor units need verified "
                "KYC; yours is not verified yet.",
                kyc_status=user.kyc_status,
                kyc_required_above=rules.kyc_required_above,
            )

    if not member_locked:
        await policy.lock_member_withdrawals(session, member_id)
    await policy.check_limits(
        session, rules, member_id=member_id, amount=data.amount, currency=data.currency, now=now
    )
    withdrawal_id = uuid7()
    try:
        transfer_id = await money.hold(
            session,
            withdrawal_id=withdrawal_id,
            member_id=member_id,
            amount=data.amount,
            currency=data.currency,
            attempt=1,
        )
    except ledger.InsufficientFunds as exc:
        balance = await ledger.balance_of(session, member_id, data.currency)
        raise InsufficientBalance(
            f"Your available balance is {balance.available} {data.currency} minor units; "
            f"you asked for {data.amount}.",
            available=balance.available,
        ) from exc

    automatic = data.amount < rules.auto_approve_below
    withdrawal = Withdrawal(
        id=withdrawal_id,
        member_id=member_id,
        amount=data.amount,
        fee=fee,
        currency=data.currency,
        payout_method_id=method.id,
        method_kind=method.kind,
        method_masked=method.masked,
        # Below the threshold it is approved as it is created: one INSERT, not an INSERT and an UPDATE.
        state=(WithdrawalState.approved if automatic else WithdrawalState.requested).value,
        approved_at=now if automatic else None,
        provider=provider.value,
        attempt=1,
        hold_transfer_id=transfer_id,
        created_at=now,
        updated_at=now,
    )
    await record_created(
        session,
        withdrawal,
        Actor(member_id, "member", ctx),
        approved_by=Actor(None, "system", ctx) if automatic else None,
    )
    return withdrawal


async def cancel_withdrawal(
    session: AsyncSession,
    member_id: uuid.UUID,
    withdrawal_id: uuid.UUID,
    reason: str | None,
    ctx: RequestContext,
) -> Withdrawal:
    """Cancel before the provider has it; the held amount goes back. Cancelling twice answers the
    same (a retried request must not fail because the first one worked)."""
    withdrawal = await lock(session, withdrawal_id, member_id=member_id)
    if withdrawal.state == WithdrawalState.cancelled.value:
        return withdrawal
    ensure_allowed(withdrawal, WithdrawalState.cancelled)
    await money.release(session, withdrawal, "cancelled")
    withdrawal.reason = reason
    await transition(
        session,
        withdrawal,
        WithdrawalState.cancelled,
        Actor(member_id, "member", ctx),
        details={"reason": reason} if reason else None,
    )
    return withdrawal
