"""Worker side of rewards: take reversals back, grant queued rewards, release those past their hold."""

from __future__ import annotations

from referloop.core.periodic import periodic
from referloop.referrals.rewards.service.jobs import DEFAULT_BATCH, run_once
from referloop.runtime import Runtime


@periodic("rewards.process", every=1.0, full_batch=DEFAULT_BATCH)
async def process_rewards(rt: Runtime) -> int:
    return (await run_once(rt, limit=DEFAULT_BATCH)).total
