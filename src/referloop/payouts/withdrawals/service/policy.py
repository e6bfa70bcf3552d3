"""What a withdrawal request must satisfy: amount bounds, the member's daily and monthly limits, the
payout method's cool-down, the KYC gate, and what the configured provider can pay."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import bindparam, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.config import PayoutProviderName, Settings, WithdrawalPolicy
from referloop.core.db import lock_by_name
from referloop.payouts.withdrawals.errors import (
    AboveMaximum,
    BelowMinimum,
    DailyLimitExceeded,
    FeeTooLarge,
    MonthlyLimitExceeded,
    PayoutMethodCoolingDown,
    PayoutMethodNotSupported,
)
from referloop.payouts.withdrawals.models import NOT_COUNTED, Withdrawal

# What each provider pays (None: anything, as staff pay by hand). Checked when the member asks, so
# that a withdrawal the provider would refuse is never held.
PROVIDER_KINDS: dict[PayoutProviderName, frozenset[str] | None] = {
    PayoutProviderName.manual: None,
    PayoutProviderName.razorpayx: frozenset({"bank_account", "upi"}),
    PayoutProviderName.stripe: frozenset({"stripe_account"}),
}
PROVIDER_CURRENCIES: dict[PayoutProviderName, frozenset[str] | None] = {
    PayoutProviderName.manual: None,
    PayoutProviderName.razorpayx: frozenset({"INR"}),
    PayoutProviderName.stripe: None,
}


def policy_for(settings: Settings, currency: str) -> WithdrawalPolicy:
    return settings.withdrawal_policy_by_currency.get(currency, settings.withdrawal_policy)


def fee_for(policy: WithdrawalPolicy, amount: int) -> int:
    fee = policy.fee_fixed + amount * policy.fee_bps // 10_000
    if fee >= amount:
        raise FeeTooLarge(
            f"The fee ({fee}) would take the whole amount; withdraw more.", fee=fee, amount=amount
        )
    return fee


def check_amount(policy: WithdrawalPolicy, amount: int, currency: str) -> None:
    if amount < policy.min_amount:
        raise BelowMinimum(
            f"The smallest withdrawal is {policy.min_amount} {currency} minor units.",
            min_amount=policy.min_amount,
        )
    if amount > policy.max_amount:
        raise AboveMaximum(
            f"The largest withdrawal is {policy.max_amount} {currency} minor units.",
            max_amount=policy.max_amount,
        )


def check_method_usable(usable_from: datetime, now: datetime) -> None:
    if usable_from > now:
        raise PayoutMethodCoolingDown(
            "This payout method was added or changed recently; it can receive payouts from "
            f"{usable_from.isoformat()}.",
            usable_from=usable_from.isoformat(),
        )


def check_provider_pays(provider: PayoutProviderName, kind: str, currency: str) -> None:
    kinds = PROVIDER_KINDS[provider]
    if kinds is not None and kind not in kinds:
        raise PayoutMethodNotSupported(
            f"Payouts go through {provider.value}, which cannot pay a {kind} method; use one of: "
            f"{', '.join(sorted(kinds))}.",
            supported_kinds=sorted(kinds),
        )
    currencies = PROVIDER_CURRENCIES[provider]
    if currencies is not None and currency not in currencies:
        raise PayoutMethodNotSupported(
            f"Payouts go through {provider.value}, which pays {', '.join(sorted(currencies))} only.",
            supported_currencies=sorted(currencies),
        )


def member_lock_key(member_id: uuid.UUID) -> str:
    """The advisory lock (by name) that serialises one member's withdrawal requests."""
    return f"withdrawals:{member_id}"


async def lock_member_withdrawals(session: AsyncSession, member_id: uuid.UUID) -> None:
    """Serialise one member's withdrawal requests until commit, so that two requests at once cannot
    both pass the daily limit. Other members are not affected. (POST /v1/withdrawals takes this lock
    in the statement that claims its Idempotency-Key instead: `run_idempotent(lock=...)`.)"""
    await lock_by_name(session, member_lock_key(member_id))


# Made once: a statement object keeps the cache key SQLAlchemy computed for it, and the states are
# written into it (NOT IN a literal list), where a list parameter would be expanded on every call.
_SPENT = select(
    func.coalesce(func.sum(Withdrawal.amount).filter(Withdrawal.created_at >= bindparam("day_start")), 0),
    func.coalesce(func.sum(Withdrawal.amount), 0),
).where(
    Withdrawal.member_id == bindparam("member_id"),
    Withdrawal.currency == bindparam("currency"),
    Withdrawal.created_at >= bindparam("month_start"),
    Withdrawal.state.not_in([literal_column(f"'{s.value}'") for s in sorted(NOT_COUNTED, key=str)]),
)


async def check_limits(
    session: AsyncSession,
    policy: WithdrawalPolicy,
    *,
    member_id: uuid.UUID,
    amount: int,
    currency: str,
    now: datetime,
) -> None:
    """Call with the member's withdrawals locked (`lock_member_withdrawals`). Calendar day and month
    in UTC; withdrawals that failed, were cancelled, rejected or returned don't count."""
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month_start = day_start.replace(day=1)
    row = (
        await session.execute(
            _SPENT,
            {
                "member_id": member_id,
                "currency": currency,
                "day_start": day_start,
                "month_start": month_start,
            },
        )
    ).one()
    today, month = int(row[0]), int(row[1])
    if today + amount > policy.daily_max_amount:
        left = max(0, policy.daily_max_amount - today)
        raise DailyLimitExceeded(
            f"You can withdraw {left} more {currency} minor units today.",
            limit=policy.daily_max_amount,
            remaining=left,
        )
    if month + amount > policy.monthly_max_amount:
        left = max(0, policy.monthly_max_amount - month)
        raise MonthlyLimitExceeded(
            f"You can withdraw {left} more {currency} minor units this month.",
            limit=policy.monthly_max_amount,
            remaining=left,
        )
