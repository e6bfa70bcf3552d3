"""Growing delay after repeated failed sign-ins to one account.

After `login_failures_before_delay` failures in a row, each further failure locks the account's
sign-in for 2, 4, 8 ... seconds (capped), answered as 429 with Retry-After. Success clears it."""

from __future__ import annotations

from referloop.core.errors import TooManyRequests
from referloop.runtime import Runtime

_FAILURE_WINDOW_SECONDS = 3600


class LoginThrottle:
    def __init__(self, rt: Runtime, account_key: str) -> None:
        self.rt = rt
        tag = "{login:" + account_key + "}"
        self.failures_key = f"auth:login_failures:{tag}"
        self.lock_key = f"auth:login_lock:{tag}"

    async def check(self) -> None:
        if not self.rt.settings.rate_limit_enabled:
            return
        ttl = await self.rt.redis.pttl(self.lock_key)
        if ttl > 0:
            raise TooManyRequests((ttl + 999) // 1000, "Too many failed sign-ins; wait before trying again.")

    async def failed(self) -> None:
        if not self.rt.settings.rate_limit_enabled:
            return
        pipe = self.rt.redis.pipeline(transaction=True)
        pipe.incr(self.failures_key)
        pipe.expire(self.failures_key, _FAILURE_WINDOW_SECONDS)
        failures, _ = await pipe.execute()
        over = int(failures) - self.rt.settings.login_failures_before_delay
        if over >= 0:
            delay = min(2 ** (over + 1), self.rt.settings.login_delay_max_seconds)
            await self.rt.redis.set(self.lock_key, b"1", ex=delay)

    async def succeeded(self) -> None:
        await self.rt.redis.delete(self.failures_key, self.lock_key)
