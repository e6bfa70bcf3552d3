"""Withdrawal refusals: each a 4xx with a stable code, raised before anything is written."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from referloop.core.errors import Conflict, Forbidden, InvalidInput, NotFound


class WithdrawalNotFound(NotFound):
    code = "withdrawal_not_found"
    title = "Withdrawal not found"

    def __init__(self, detail: str = "No such withdrawal.", **extra: Any) -> None:
        super().__init__(detail, **extra)


class IllegalTransition(Conflict):
    """The withdrawal is in a state from which this change is not allowed."""

    code = "withdrawal_state_conflict"
    title = "Not allowed in the withdrawal's current state"

    def __init__(self, state: str, to: str, allowed: Iterable[str]) -> None:
        names = sorted(allowed)
        can = ", ".join(names) if names else "nothing (it is final)"
        super().__init__(
            f"A withdrawal that is {state} cannot become {to}; from {state} it can become: {can}.",
            state=state,
            requested_state=to,
            allowed=names,
        )


class BelowMinimum(InvalidInput):
    code = "withdrawal_below_minimum"
    title = "Amount below the minimum withdrawal"


class AboveMaximum(InvalidInput):
    code = "withdrawal_above_maximum"
    title = "Amount above the maximum withdrawal"


class DailyLimitExceeded(InvalidInput):
    code = "daily_withdrawal_limit"
    title = "Daily withdrawal limit reached"


class MonthlyLimitExceeded(InvalidInput):
    code = "monthly_withdrawal_limit"
    title = "Monthly withdrawal limit reached"


class InsufficientBalance(InvalidInput):
    code = "insufficient_funds"
    title = "Insufficient funds"


class KycRequired(Forbidden):
    code = "kyc_required"
    title = "Verified KYC required"


class PayoutMethodCoolingDown(Conflict):
    code = "payout_method_cooling_down"
    title = "Payout method not usable yet"


class PayoutMethodNotSupported(InvalidInput):
    code = "payout_method_not_supported"
    title = "Payout method not supported"


class UnknownCurrency(InvalidInput):
    code = "unknown_currency"
    title = "Unknown currency"


class FeeTooLarge(InvalidInput):
    code = "withdrawal_fee_exceeds_amount"
    title = "The fee would take the whole amount"


class TooManyAttempts(Conflict):
    code = "too_many_payout_attempts"
    title = "Too many payout attempts"


class WrongProvider(Conflict):
    code = "withdrawal_wrong_provider"
    title = "Not possible with this withdrawal's payout provider"


class PaidWithOtherReference(Conflict):
    code = "withdrawal_paid_with_other_reference"
    title = "Already marked paid with another reference"


__all__ = [
    "AboveMaximum",
    "BelowMinimum",
    "DailyLimitExceeded",
    "FeeTooLarge",
    "IllegalTransition",
    "InsufficientBalance",
    "KycRequired",
    "MonthlyLimitExceeded",
    "PaidWithOtherReference",
    "PayoutMethodCoolingDown",
    "PayoutMethodNotSupported",
    "TooManyAttempts",
    "UnknownCurrency",
    "WithdrawalNotFound",
    "WrongProvider",
]
