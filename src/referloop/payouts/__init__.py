"""Payout methods, withdrawals and payout providers."""
