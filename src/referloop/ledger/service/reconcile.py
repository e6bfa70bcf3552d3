"""Reconciliation: recompute every balance from the postings and prove the ledger's invariants.

Each check is one statement (one snapshot); the CLI runs them all in one REPEATABLE READ
transaction so that the checks agree with each other while entries keep being posted."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True, slots=True)
class Discrepancy:
    check: str
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"{self.check}: {self.subject}: {self.detail}"


@dataclass
class ReconcileReport:
    accounts: int = 0
    entries: int = 0
    postings: int = 0
    discrepancies: list[Discrepancy] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.discrepancies


# Stored balance vs the sum of the account's postings, bucket by bucket.
_BALANCE_DRIFT = text("""
SELECT a.id, a.code, a.member_id, a.scope, a.currency, a.shard,
       a.pending, a.available, a.held,
       coalesce(p.pending, 0) AS p_pending, coalesce(p.available, 0) AS p_available,
       coalesce(p.held, 0) AS p_held
FROM ledger_accounts a
LEFT JOIN (
    SELECT account_id,
           sum(amount) FILTER (WHERE bucket = 'pending') AS pending,
           sum(amount) FILTER (WHERE bucket = 'available') AS available,
           sum(amount) FILTER (WHERE bucket = 'held') AS held
    FROM ledger_postings GROUP BY account_id
) p ON p.account_id = a.id
WHERE a.pending <> coalesce(p.pending, 0) OR a.available <> coalesce(p.available, 0)
   OR a.held <> coalesce(p.held, 0)
""")

_UNBALANCED = text("""
SELECT entry_id, currency, sum(amount) AS total FROM ledger_postings
GROUP BY entry_id, currency HAVING sum(amount) <> 0
""")

_EMPTY_ENTRIES = text("""
SELECT e.id FROM ledger_entries e
WHERE NOT EXISTS (SELECT 1 FROM ledger_postings p WHERE p.entry_id = e.id)
""")

_MISMATCHED_POSTINGS = text("""
SELECT p.entry_id, p.line, p.currency, a.currency AS account_currency, p.member_id, a.member_id AS account_member
FROM ledger_postings p JOIN ledger_accounts a ON a.id = p.account_id
WHERE p.currency <> a.currency OR p.member_id IS DISTINCT FROM a.member_id
   OR (a.member_id IS NULL AND p.bucket <> 'available')
""")

_CURRENCY_TOTALS = text("""
SELECT currency, sum(pending + available + held) AS total FROM ledger_accounts
GROUP BY currency HAVING sum(pending + available + held) <> 0
""")

_NEGATIVE = text("""
SELECT id, member_id, currency, pending, available, held FROM ledger_accounts
WHERE member_id IS NOT NULL AND (pending < 0 OR available < 0 OR held < 0)
""")

# A member's pending balance is exactly its open earnings; its held balance exactly its open holds.
_OPEN_TRANSFERS = text("""
SELECT a.id, a.member_id, a.currency, a.pending, a.held,
       coalesce(t.earning, 0) AS open_earning, coalesce(t.hold, 0) AS open_hold
FROM ledger_accounts a
LEFT JOIN (
    SELECT account_id,
           sum(amount) FILTER (WHERE kind = 'earning') AS earning,
           sum(amount) FILTER (WHERE kind = 'hold') AS hold
    FROM ledger_pending_transfers WHERE status = 'pending' GROUP BY account_id
) t ON t.account_id = a.id
WHERE a.member_id IS NOT NULL AND (a.pending <> coalesce(t.earning, 0) OR a.held <> coalesce(t.hold, 0))
""")

_COUNTS = text("""
SELECT (SELECT count(*) FROM ledger_accounts), (SELECT count(*) FROM ledger_entries),
       (SELECT count(*) FROM ledger_postings)
""")


def _account_name(row: object) -> str:
    member_id = getattr(row, "member_id", None)
    if member_id is not None:
        return f"member:{member_id} {row.currency}"  # type: ignore[attr-defined]
    return f"{row.code}:{row.scope} {row.currency} shard {row.shard}"  # type: ignore[attr-defined]


async def reconcile(session: AsyncSession) -> ReconcileReport:
    """Every difference between what is stored and what the postings say; none in a sound ledger."""
    report = ReconcileReport()
    counts = (await session.execute(_COUNTS)).one()
    report.accounts, report.entries, report.postings = int(counts[0]), int(counts[1]), int(counts[2])
    found = report.discrepancies
    for r in await session.execute(_BALANCE_DRIFT):
        found.append(
            Discrepancy(
                "balance",
                _account_name(r),
                f"stored pending/available/held {r.pending}/{r.available}/{r.held}, "
                f"postings say {r.p_pending}/{r.p_available}/{r.p_held}",
            )
        )
    for r in await session.execute(_UNBALANCED):
        found.append(
            Discrepancy("unbalanced_entry", f"entry {r.entry_id}", f"{r.currency} sums to {r.total}")
        )
    for r in await session.execute(_EMPTY_ENTRIES):
        found.append(Discrepancy("empty_entry", f"entry {r.id}", "has no postings"))
    for r in await session.execute(_MISMATCHED_POSTINGS):
        found.append(
            Discrepancy(
                "posting_account",
                f"entry {r.entry_id} line {r.line}",
                f"posting {r.currency}/{r.member_id} on an account {r.account_currency}/{r.account_member}",
            )
        )
    for r in await session.execute(_CURRENCY_TOTALS):
        found.append(Discrepancy("currency_total", r.currency, f"all balances sum to {r.total}, not 0"))
    for r in await session.execute(_NEGATIVE):
        found.append(
            Discrepancy(
                "negative_balance",
                f"member:{r.member_id} {r.currency}",
                f"pending/available/held {r.pending}/{r.available}/{r.held}",
            )
        )
    for r in await session.execute(_OPEN_TRANSFERS):
        found.append(
            Discrepancy(
                "pending_transfers",
                f"member:{r.member_id} {r.currency}",
                f"pending {r.pending} vs open earnings {r.open_earning}, held {r.held} vs open holds {r.open_hold}",
            )
        )
    return report
