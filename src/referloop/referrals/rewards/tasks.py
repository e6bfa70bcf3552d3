"""Worker side of rewards: take reversals back, grant queued rewards, release those past their hold."""

from __future__ import annotations

from referloop.core.periodic import periodic
from referloop.referrals.rewards.service.jobs import DEFAULT_BATCH, run_once
from referloop.runtime import Runtime


# Polled four times a second: the queries behind an idle pass read partial indexes of the work due
# (a few index probes), and a reward queued by a partner's batch is granted within a quarter second
# of the batch's commit. The API and the worker are separate processes, so no in-process wake-up
# reaches this loop.
@periodic("rewards.process", every=0.25, full_batch=DEFAULT_BATCH)
async def process_rewards(rt: Runtime) -> int:
    return (await run_once(rt, limit=DEFAULT_BATCH)).total
