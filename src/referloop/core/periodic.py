"""Periodic jobs the worker runs (click flushing, expiry sweeps, rollups...).

A job is `async def job(rt) -> int` returning how much it did; the worker calls it every
`interval_seconds` (sooner again while it reports a full batch). Jobs must be safe to run in several
workers at once (claim rows with SKIP LOCKED, or use the ledger's idempotency), because every worker
runs every job. Domains register jobs in their `tasks.py`, which the worker imports."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from referloop.runtime import Runtime

Job = Callable[["Runtime"], Awaitable[int]]


@dataclass(frozen=True)
class PeriodicJob:
    name: str
    interval_seconds: float
    run: Job
    full_batch: int | None = None  # a run that did this much (or more) is followed at once by another
    wake_channel: str | None = None  # a NOTIFY on it runs the job at once (core/wakeups.py)


periodic_jobs: dict[str, PeriodicJob] = {}


def periodic(
    name: str, *, every: float, full_batch: int | None = None, wake_channel: str | None = None
) -> Callable[[Job], Job]:
    def register(fn: Job) -> Job:
        periodic_jobs[name] = PeriodicJob(
            name=name, interval_seconds=every, run=fn, full_batch=full_batch, wake_channel=wake_channel
        )
        return fn

    return register
