"""One Redis client per process."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis

# A burst beyond the pool waits up to this long for a free connection instead of failing at once
# (redis-py's default pool raises "Too many connections" the moment it is exhausted).
POOL_TIMEOUT_SECONDS = 5


def create_redis(url: str, max_connections: int = 200) -> Redis:
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=POOL_TIMEOUT_SECONDS, health_check_interval=30
    )
    return Redis(connection_pool=pool)
