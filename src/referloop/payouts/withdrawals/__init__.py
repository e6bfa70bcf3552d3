"""Withdrawals: a member's request to be paid out, from the hold on their balance to the provider's
last word on the payout (see service/ for the life cycle)."""
