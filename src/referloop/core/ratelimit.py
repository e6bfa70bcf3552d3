"""Rate limits in Redis, using the `limits` library's sliding-window counter.

The library wraps each limit's key in braces ({LIMITER/login-ip/1.2.3.4/20/1/minute}), so the two
keys of one sliding window share a hash slot and work on a Redis Cluster."""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from referloop.core.errors import TooManyRequests


def _retry_after(reset_time: float) -> int:
    # The sliding-window counter estimates when a slot frees up; one second of margin makes sure a
    # client that waits exactly Retry-After is not refused again.
    return max(1, math.ceil(reset_time - time.time()) + 1)


class RateLimiter:
    def __init__(self, redis_url: str, *, enabled: bool = True, namespace: str = "rl") -> None:
        url = redis_url.replace("redis://", "async+redis://", 1).replace("unix://", "async+redis+unix://", 1)
        self._storage = RedisStorage(url, implementation="redispy", key_prefix=namespace)
        self._limiter = SlidingWindowCounterRateLimiter(self._storage)
        self.enabled = enabled
        self._parsed: dict[str, RateLimitItem] = {}

    def _item(self, spec: str) -> RateLimitItem:
        item = self._parsed.get(spec)
        if item is None:
            item = self._parsed[spec] = parse(spec)
        return item

    async def hit(self, spec: str, *identifiers: str) -> None:
        """Count one hit; raise 429 with Retry-After when the limit is exceeded."""
        if not self.enabled:
            return
        item = self._item(spec)
        if not await self._limiter.hit(item, *identifiers):
            stats = await self._limiter.get_window_stats(item, *identifiers)
            raise TooManyRequests(_retry_after(stats.reset_time))

    async def check(self, spec: str, *identifiers: str) -> None:
        """Raise 429 if the limit is already exhausted, without counting a hit."""
        if not self.enabled:
            return
        item = self._item(spec)
        if not await self._limiter.test(item, *identifiers):
            stats = await self._limiter.get_window_stats(item, *identifiers)
            raise TooManyRequests(_retry_after(stats.reset_time))

    async def close(self) -> None:
        """Close the storage's own Redis connection pool (the library opens one per storage)."""
        client = getattr(getattr(self._storage, "bridge", None), "storage", None)
        if client is not None:
            await client.aclose()

    async def clear(self, spec: str, *identifiers: str) -> None:
        await self._limiter.clear(self._item(spec), *identifiers)
