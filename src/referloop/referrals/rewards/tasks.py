"""Worker side of rewards: take reversals back, grant queued rewards, release those past their hold."""

from __future__ import annotations

from referloop.core.periodic import periodic
from referloop.referrals.rewards.models import REWARDS_CHANNEL
from referloop.referrals.rewards.service.jobs import DEFAULT_BATCH, run_once
from referloop.runtime import Runtime


# Woken by the rewards table's trigger (migration 0016) when a transaction that queued a reward or
# asked for one back commits; polled every 2 seconds besides, for holds that end with time and as
# the fallback while the wake-up connection is down.
@periodic("rewards.process", every=2.0, full_batch=DEFAULT_BATCH, wake_channel=REWARDS_CHANNEL)
async def process_rewards(rt: Runtime) -> int:
    return (await run_once(rt, limit=DEFAULT_BATCH)).total
