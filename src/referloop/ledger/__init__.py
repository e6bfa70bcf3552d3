"""Double-entry ledger: the one internal API through which money moves.

Referral, payout, game and mission code call these functions with their own session (they flush,
the caller's transaction commits) and never touch the ledger's tables:

    from referloop import ledger
    await ledger.earn_pending(session, member_id=m, amount=5000, currency="INR",
                              source=ledger.platform_account(ledger.AccountCode.reward_expense, str(program_id)),
                              idempotency_key=f"referral:{referral_id}:reward", reference_type="referral",
                              reference_id=referral_id, expires_at=...)
    held = await ledger.hold(session, member_id=m, amount=2000, currency="INR",
                             idempotency_key=f"withdrawal:{w}:hold", reference_type="withdrawal", reference_id=w)
    await ledger.post_pending(session, held.transfer.id,
                              destination=ledger.platform_account(ledger.AccountCode.payout_clearing))
    await ledger.release(session, held.transfer.id)
"""

from referloop.ledger.currencies import CurrencyInfo, get_currency, is_currency
from referloop.ledger.errors import (
    AmountAbovePending,
    EntryNotFound,
    EntryNotReversible,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidPosting,
    PendingTransferExpired,
    PendingTransferFinal,
    PendingTransferNotFound,
    UnbalancedEntry,
    UnknownCurrency,
)
from referloop.ledger.models import AccountCode, Bucket, PendingKind, PendingStatus, PendingTransfer
from referloop.ledger.service.accounts import AccountRef, member_account, platform_account
from referloop.ledger.service.balances import (
    MemberBalance,
    MemberEntry,
    balance_of,
    balances_for,
    currency_totals,
    list_member_entries,
    list_pending_transfers,
    platform_balance,
)
from referloop.ledger.service.entries import (
    EntryView,
    Leg,
    PostedEntry,
    PostingView,
    get_entry,
    move,
    post_entry,
    reverse_entry,
)
from referloop.ledger.service.pending import (
    Earning,
    PendingResult,
    earn_pending,
    earn_pending_many,
    expire_due,
    get_pending,
    hold,
    post_pending,
    release,
    void_pending,
)
from referloop.ledger.service.reconcile import Discrepancy, ReconcileReport, reconcile

__all__ = [
    "AccountCode",
    "AccountRef",
    "AmountAbovePending",
    "Bucket",
    "CurrencyInfo",
    "Discrepancy",
    "Earning",
    "EntryNotFound",
    "EntryNotReversible",
    "EntryView",
    "IdempotencyConflict",
    "InsufficientFunds",
    "InvalidPosting",
    "Leg",
    "MemberBalance",
    "MemberEntry",
    "PendingKind",
    "PendingResult",
    "PendingStatus",
    "PendingTransfer",
    "PendingTransferExpired",
    "PendingTransferFinal",
    "PendingTransferNotFound",
    "PostedEntry",
    "PostingView",
    "ReconcileReport",
    "UnbalancedEntry",
    "UnknownCurrency",
    "balance_of",
    "balances_for",
    "currency_totals",
    "earn_pending",
    "earn_pending_many",
    "expire_due",
    "get_currency",
    "get_entry",
    "get_pending",
    "hold",
    "is_currency",
    "list_member_entries",
    "list_pending_transfers",
    "member_account",
    "move",
    "platform_account",
    "platform_balance",
    "post_entry",
    "post_pending",
    "reconcile",
    "release",
    "reverse_entry",
    "void_pending",
]
