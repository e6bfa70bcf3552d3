"""Liveness, readiness, metrics and the public keys: the routes operators and verifiers use."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from referloop.core.deps import RuntimeDep
from referloop.core.outbox.stats import outbox_stats

router = APIRouter(tags=["system"])

_CHECK_TIMEOUT_SECONDS = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (no dependency is checked)."""
    return {"status": "ok"}


async def _check_postgres(rt: Any) -> None:
    async with rt.db.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def _check_redis(rt: Any) -> None:
    await rt.redis.ping()


async def _check_broker(rt: Any) -> None:
    if not rt.settings.amqp_url:
        return  # no broker configured: the worker drains the outbox in-process
    connection = await aio_pika.connect(rt.settings.amqp_url, timeout=_CHECK_TIMEOUT_SECONDS)
    await connection.close()


@router.get("/readyz", responses={503: {"description": "A dependency is unreachable"}})
async def readyz(rt: RuntimeDep) -> JSONResponse:
    """PostgreSQL, Redis and (when configured) RabbitMQ answer; 503 names the ones that do not."""
    checks = {"postgres": _check_postgres, "redis": _check_redis, "broker": _check_broker}

    async def run(check: Any) -> str:
        try:
            await asyncio.wait_for(check(rt), _CHECK_TIMEOUT_SECONDS)
            return "ok"
        except Exception as exc:  # any failure means "not ready"; the reason is reported
            return f"failed: {type(exc).__name__}"

    results = dict(zip(checks, await asyncio.gather(*(run(c) for c in checks.values())), strict=True))
    if not rt.settings.amqp_url:
        results["broker"] = "not configured"
    failed = [name for name, r in results.items() if r.startswith("failed")]
    return JSONResponse({"status": "unavailable" if failed else "ok", "checks": results, "failed": failed},
                        status_code=503 if failed else 200)


@router.get("/metrics", response_class=Response, include_in_schema=False)
async def metrics(rt: RuntimeDep) -> Response:
    m = rt.metrics
    try:
        async with rt.db.sessionmaker() as session:
            stats = await outbox_stats(session)
        m.outbox_backlog.set(stats.backlog)
        m.outbox_oldest_age.set(stats.oldest_age_seconds)
        m.outbox_dead.set(stats.dead)
    except Exception:  # noqa: S110 - metrics must answer even while the database is down
        pass
    pool: Any = rt.db.engine.pool
    m.db_pool_in_use.set(pool.checkedout())
    m.db_pool_size.set(pool.size())
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/.well-known/jwks.json")
async def jwks(rt: RuntimeDep) -> JSONResponse:
    """Public keys that verify access tokens (RFC 7517); includes keys being rotated in or out."""
    return JSONResponse(rt.signer.jwks(), headers={"Cache-Control": "public, max-age=300"})
