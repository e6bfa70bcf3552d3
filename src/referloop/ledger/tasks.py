"""Ledger jobs the worker runs on a timer: expiring pending transfers whose time has passed."""

from __future__ import annotations

from referloop.core.periodic import periodic
from referloop.ledger.service.pending import expire_due
from referloop.runtime import Runtime

EXPIRY_BATCH = 100


@periodic("ledger.expire_pending", every=60.0, full_batch=EXPIRY_BATCH)
async def expire_pending_batch(rt: Runtime) -> int:
    """Void up to one batch of due pending transfers in one transaction; the worker calls again at
    once while batches come back full. SKIP LOCKED lets every worker run it side by side."""
    async with rt.db.sessionmaker() as session, session.begin():
        return await expire_due(session, limit=EXPIRY_BATCH)


async def expire_pending_transfers(rt: Runtime, *, batch: int = EXPIRY_BATCH) -> int:
    """Void every due pending transfer, one committed batch at a time (`referloop ledger expire`)."""
    total = 0
    while True:
        async with rt.db.sessionmaker() as session, session.begin():
            done = await expire_due(session, limit=batch)
        total += done
        if done < batch:
            return total
