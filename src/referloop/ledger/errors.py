"""Ledger refusals. Each is a 4xx with a stable code: the ledger never half-applies anything."""

from referloop.core.errors import AppError, Conflict, InvalidInput, NotFound


class UnknownCurrency(InvalidInput):
    code = "unknown_currency"
    title = "Unknown currency"


class UnbalancedEntry(InvalidInput):
    code = "unbalanced_entry"
    title = "Postings do not sum to zero per currency"


class InvalidPosting(InvalidInput):
    code = "invalid_posting"
    title = "Invalid posting"


class InsufficientFunds(AppError):
    status_code = 422
    code = "insufficient_funds"
    title = "Insufficient funds"


class IdempotencyConflict(Conflict):
    """The idempotency reference was already used for a different entry (Formance's rule)."""

    code = "idempotency_conflict"
    title = "Idempotency key reused with a different body"


class EntryNotFound(NotFound):
    code = "ledger_entry_not_found"
    title = "Ledger entry not found"


class EntryNotReversible(Conflict):
    code = "entry_not_reversible"
    title = "This entry cannot be reversed"


class PendingTransferNotFound(NotFound):
    code = "pending_transfer_not_found"
    title = "Pending transfer not found"


class PendingTransferFinal(Conflict):
    """A pending transfer is posted or voided exactly once (TigerBeetle's rule)."""

    code = "pending_transfer_final"
    title = "Pending transfer already posted, voided or expired"


class AmountAbovePending(InvalidInput):
    code = "amount_above_pending"
    title = "Amount above the pending amount"


class PendingTransferExpired(Conflict):
    """Its expiry passed: it can only be voided (the expiry job does that), not posted."""

    code = "pending_transfer_expired"
