"""The ledger's service, split by capability: accounts, entries, pending transfers, balances,
reconciliation. Other domains import from `referloop.ledger`, never from the tables."""
