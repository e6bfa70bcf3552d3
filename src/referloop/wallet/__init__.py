"""The member's view of their money: balances and history, read through the ledger's API."""
