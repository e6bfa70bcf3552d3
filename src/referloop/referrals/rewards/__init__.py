"""Rewards: rules per campaign and milestone, budgets, and the ledger's two-phase earnings."""
