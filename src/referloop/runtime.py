"""The process-wide services, built once from Settings: database, Redis, keys, hashers, limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from referloop.config import Settings
from referloop.core.db import Database, to_asyncpg_url
from referloop.core.observability import Metrics
from referloop.core.ratelimit import RateLimiter
from referloop.core.redis import create_redis
from referloop.core.security.fields import FieldCipher, load_or_create_dev_field_key
from referloop.core.security.passwords import Passwords
from referloop.core.security.tokens import SigningKey, TokenSigner, load_or_create_dev_key


def resolve_service_urls(settings: Settings) -> Settings:
    """Fill empty service URLs with embedded servers (development only)."""
    updates: dict[str, Any] = {}
    if not settings.database_url:
        from referloop.core.embedded import start_embedded_postgres

        updates["database_url"] = start_embedded_postgres(settings.var_dir)
    if not settings.redis_url:
        from referloop.core.embedded import start_embedded_redis

        updates["redis_url"] = start_embedded_redis(settings.var_dir)
    return settings.model_copy(update=updates) if updates else settings


@dataclass
class Runtime:
    settings: Settings
    db: Database
    redis: Redis
    signer: TokenSigner
    passwords: Passwords
    limiter: RateLimiter
    cipher: FieldCipher
    metrics: Metrics = field(default_factory=Metrics)

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        settings = resolve_service_urls(settings)
        keys_dir = settings.var_dir / "keys"
        pems = [k.get_secret_value() for k in settings.jwt_private_keys] or [
            load_or_create_dev_key(keys_dir).decode()
        ]
        field_keys = settings.field_encryption_keys.get_secret_value() or load_or_create_dev_field_key(
            keys_dir
        )
        return cls(
            settings=settings,
            db=Database(
                to_asyncpg_url(settings.database_url),
                pool_size=settings.db_pool_size,
                max_overflow=settings.db_max_overflow,
                read_pool_size=settings.db_read_pool_size,
                read_url=to_asyncpg_url(settings.db_read_url) if settings.db_read_url else None,
            ),
            redis=create_redis(settings.redis_url),
            signer=TokenSigner(
                [SigningKey.from_pem(p) for p in pems],
                settings.jwt_issuer,
                settings.access_token_ttl_seconds,
                verified_cache_size=settings.access_token_cache_size,
            ),
            passwords=Passwords(
                settings.argon2_time_cost, settings.argon2_memory_cost_kib, settings.argon2_parallelism
            ),
            limiter=RateLimiter(settings.redis_url, enabled=settings.rate_limit_enabled),
            cipher=FieldCipher.from_setting(field_keys),
        )

    async def close(self) -> None:
        await self.limiter.close()
        await self.redis.aclose()
        await self.db.dispose()
