"""Ledger jobs the worker runs on a timer: expiring pending transfers whose time has passed."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from referloop.ledger.service.pending import expire_due
from referloop.runtime import Runtime

log = structlog.get_logger(__name__)

EXPIRY_BATCH = 100


async def expire_pending_transfers(rt: Runtime, *, batch: int = EXPIRY_BATCH) -> int:
    """Void every due pending transfer, one committed batch at a time; returns how many expired."""
    total = 0
    while True:
        async with rt.db.sessionmaker() as session, session.begin():
            done = await expire_due(session, limit=batch)
        total += done
        if done < batch:
            return total


async def run_expiry_loop(rt: Runtime, stop: asyncio.Event, interval_seconds: float = 60.0) -> None:
    """Expire due transfers every `interval_seconds` until `stop` is set (for the worker)."""
    while not stop.is_set():
        try:
            expired = await expire_pending_transfers(rt)
            if expired:
                log.info("ledger.pending_expired", count=expired)
        except Exception:  # a failed round is retried next round; the worker keeps running
            log.exception("ledger.expiry_failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_seconds)
