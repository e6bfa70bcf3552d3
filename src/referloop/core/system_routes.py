"""Liveness, readiness, metrics and the public keys: the routes operators and verifiers use."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import aio_pika
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import text

from referloop.core.deps import RuntimeDep
from referloop.core.errors import PROBLEM_JSON, Problem, problem
from referloop.core.outbox.stats import outbox_stats
from referloop.runtime import Runtime

router = APIRouter(tags=["system"])

_CHECK_TIMEOUT_SECONDS = 2.0


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ok"] = "ok"
    checks: dict[str, str] = Field(
        description="Each dependency: `ok`, `not configured`, or `failed: <reason>`",
        examples=[{"postgres": "ok", "redis": "ok", "broker": "ok"}],
    )


class NotReady(Problem):
    """The problem answered by /readyz when a dependency does not answer."""

    checks: dict[str, str]
    failed: list[str] = Field(description="The dependencies that did not answer")


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive (no dependency is checked)."""
    return Health()


async def _check_postgres(rt: Runtime) -> None:
    async with rt.db.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def _check_redis(rt: Runtime) -> None:
    await rt.redis.ping()


async def _check_broker(rt: Runtime) -> None:
    connection = await aio_pika.connect(rt.settings.amqp_url, timeout=_CHECK_TIMEOUT_SECONDS)
    await connection.close()


async def _run_check(check: Callable[[Runtime], Awaitable[None]], rt: Runtime) -> str:
    try:
        await asyncio.wait_for(check(rt), _CHECK_TIMEOUT_SECONDS)
    except Exception as exc:  # any failure means "not ready"; the kind of failure is reported
        return f"failed: {type(exc).__name__}"
    return "ok"


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={
        503: {
            "description": "A dependency does not answer; `failed` names it",
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/NotReady"}}},
        }
    },
)
async def readyz(request: Request, rt: RuntimeDep) -> Readiness | JSONResponse:
    """PostgreSQL, Redis and (when `AMQP_URL` is set) RabbitMQ answer within 2 seconds each; 503
    names the ones that do not."""
    checks: dict[str, Callable[[Runtime], Awaitable[None]]] = {
        "postgres": _check_postgres,
        "redis": _check_redis,
    }
    if rt.settings.amqp_url:
        checks["broker"] = _check_broker
    outcomes = await asyncio.gather(*(_run_check(check, rt) for check in checks.values()))
    results = dict(zip(checks, outcomes, strict=True))
    if not rt.settings.amqp_url:
        results["broker"] = "not configured"  # the worker drains the outbox in-process
    failed = [name for name, outcome in results.items() if outcome.startswith("failed")]
    if failed:
        return problem(
            503,
            "not_ready",
            "Not ready",
            f"Not answering: {', '.join(failed)}.",
            request,
            checks=results,
            failed=failed,
        )
    return Readiness(checks=results)


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
    for name, engine in (("write", rt.db.engine), ("read", rt.db.read_engine)):
        pool: Any = engine.pool
        m.db_pool_in_use.labels(name).set(pool.checkedout())
        m.db_pool_size.labels(name).set(pool.size())
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/.well-known/jwks.json")
async def jwks(rt: RuntimeDep) -> JSONResponse:
    """Public keys that verify access tokens (RFC 7517); includes keys being rotated in or out."""
    return JSONResponse(rt.signer.jwks(), headers={"Cache-Control": "public, max-age=300"})
