"""Messages, deliveries and the sender.

Fan-out: each outbox event we send becomes one message (its id is the event's id) and one delivery per
matching endpoint, in the consumer's transaction (the inbox makes that happen once).

Sending (`deliver_due`, run by the worker's periodic job) happens outside any open transaction:
1. claim due deliveries with `FOR UPDATE SKIP LOCKED` and push their `next_attempt_at` to the lease's
   end, then commit: another worker skips them, and if this one dies they become due again after the
   lease (at-least-once, which receivers absorb with the `webhook-id`). The lease covers every
   attempt of the batch: each has a hard deadline (`webhook_timeout_seconds` for the whole request,
   answer included), and an attempt that could no longer finish inside the lease is not started;
2. send them concurrently with httpx (no redirects, a bounded read of the answer, and only to public
   addresses in production: see `egress`);
3. as soon as one attempt ends, log it and schedule the delivery in its own transaction: success, or
   exponential backoff with jitter until the delivery's retry window ends, then `failed`. The lease
   value the claim wrote is the proof of ownership: when it has changed (the lease ran out and
   another worker claimed the delivery, a manual redelivery, a deleted endpoint), the result is stale
   and changes nothing. An endpoint that has had only failures for `webhook_disable_after_seconds`
   is disabled and its owner emailed.

Scheduling takes `now` as a parameter so tests can move the clock instead of sleeping; the
`webhook-timestamp` header is always the real time (receivers check it against theirs)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import httpx
import orjson
import structlog
from sqlalchemy import Select, and_, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.compliance import audit
from referloop.config import Settings
from referloop.core.context import RequestContext
from referloop.core.db import utcnow
from referloop.core.ids import uuid7
from referloop.core.pagination import paginate_by_id_desc, split_page
from referloop.notifications.service import send_email
from referloop.runtime import Runtime
from referloop.webhooks import signing
from referloop.webhooks.errors import DeliveryNotFound, EndpointDisabled
from referloop.webhooks.events import to_outbound
from referloop.webhooks.models import (
    AttemptTrigger,
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookMessage,
)
from referloop.webhooks.service import egress
from referloop.webhooks.service.endpoints import EndpointOwner, get_endpoint, signing_secrets

log = structlog.get_logger(__name__)

USER_AGENT = "Referloop-Webhooks/1.0"
DISABLED_TEMPLATE = "webhook_endpoint_disabled"
_EXCERPT_BYTES = 1000
_ERROR_CHARS = 500
_LEASE_MARGIN_SECONDS = 60.0


# -- fan-out --------------------------------------------------------------------------------------


async def fan_out(session: AsyncSession, event_id: uuid.UUID, topic: str, payload: dict[str, Any]) -> int:
    """Create the message and one delivery per matching endpoint; returns how many deliveries.
    An event handled twice (a redelivery past the inbox) finds its message and adds nothing."""
    event = to_outbound(topic, payload)
    if event is None:
        return 0
    # Partner endpoints always carry their university, so an event with none reaches operators only.
    conditions = [
        WebhookEndpoint.deleted_at.is_(None),
        WebhookEndpoint.disabled_at.is_(None),
        or_(
            func.cardinality(WebhookEndpoint.event_types) == 0,
            WebhookEndpoint.event_types.any_() == event.event_type,
        ),
        or_(
            WebhookEndpoint.university_id.is_(None),
            WebhookEndpoint.university_id == event.university_id,
        ),
        or_(
            func.cardinality(WebhookEndpoint.program_ids) == 0,
            WebhookEndpoint.program_ids.any_() == event.program_id,
        ),
    ]
    endpoint_ids = list(await session.scalars(select(WebhookEndpoint.id).where(and_(*conditions))))
    if not endpoint_ids:
        return 0  # no message is stored for an event nobody listens to
    created = await session.scalar(
        pg_insert(WebhookMessage)
        .values(
            id=event_id,
            event_type=event.event_type,
            payload=event.body,
            university_id=event.university_id,
            program_id=event.program_id,
        )
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(WebhookMessage.id)
    )
    if created is None:
        return 0
    now = utcnow()
    await session.execute(
        insert(WebhookDelivery),
        [
            {
                "id": uuid7(),
                "message_id": event_id,
                "endpoint_id": endpoint_id,
                "status": DeliveryStatus.pending.value,
                "next_attempt_at": now,
                "window_started_at": now,
            }
            for endpoint_id in endpoint_ids
        ],
    )
    return len(endpoint_ids)


# -- sending --------------------------------------------------------------------------------------


def retry_delay_seconds(attempts: int, settings: Settings, *, jitter: bool = True) -> float:
    """Wait after the `attempts`-th failure: base * 2^(attempts-1), capped; up to 10 % jitter
    (downwards) so that deliveries that failed together do not come back together."""
    delay = min(
        settings.webhook_retry_max_seconds,
        settings.webhook_retry_base_seconds * float(2 ** max(0, min(attempts, 40) - 1)),
    )
    return delay * (1 - random.random() * 0.1) if jitter else delay


@dataclass(frozen=True)
class _Job:
    delivery_id: uuid.UUID
    endpoint_id: uuid.UUID
    url: str
    secrets: list[str]
    msg_id: str
    body: bytes
    attempts: int
    window_started_at: datetime
    manual: bool
    lease: datetime  # the `next_attempt_at` the claim wrote: whoever still sees it owns the delivery


@dataclass(frozen=True)
class _Outcome:
    job: _Job
    attempted_at: datetime
    status_code: int | None
    latency_ms: int
    error: str | None
    excerpt: str | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def lease_seconds(settings: Settings, jobs: int) -> float:
    """How long a claim of `jobs` deliveries holds them: every wave of `webhook_delivery_concurrency`
    attempts within its deadline, with a margin for recording the results."""
    waves = -(-jobs // settings.webhook_delivery_concurrency)
    return waves * settings.webhook_timeout_seconds + _LEASE_MARGIN_SECONDS


async def _claim(rt: Runtime, now: datetime, limit: int) -> list[_Job]:
    settings = rt.settings
    lease_until = now + timedelta(seconds=lease_seconds(settings, limit))
    async with rt.db.sessionmaker() as session, session.begin():
        due = (
            select(WebhookDelivery.id)
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .where(
                WebhookDelivery.status == DeliveryStatus.pending.value,
                WebhookDelivery.next_attempt_at <= now,
                WebhookEndpoint.disabled_at.is_(None),
                WebhookEndpoint.deleted_at.is_(None),
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
            .with_for_update(of=WebhookDelivery, skip_locked=True)
        )
        claimed = list(
            await session.scalars(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(due.scalar_subquery()))
                .values(next_attempt_at=lease_until)
                .returning(WebhookDelivery.id)
            )
        )
        if not claimed:
            return []
        rows = (
            await session.execute(
                select(WebhookDelivery, WebhookEndpoint, WebhookMessage)
                .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
                .join(WebhookMessage, WebhookMessage.id == WebhookDelivery.message_id)
                .where(WebhookDelivery.id.in_(claimed))
            )
        ).all()
        return [
            _Job(
                delivery_id=delivery.id,
                endpoint_id=endpoint.id,
                url=endpoint.url,
                secrets=signing_secrets(rt, endpoint, now),
                msg_id=signing.message_id(message.id),
                body=orjson.dumps(message.payload),
                attempts=delivery.attempts,
                window_started_at=delivery.window_started_at,
                manual=delivery.manual_pending,
                lease=lease_until,
            )
            for delivery, endpoint, message in rows
        ]


def _describe(exc: Exception, settings: Settings) -> str:
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return f"Timed out after {settings.webhook_timeout_seconds:g} s ({type(exc).__name__})."
    if isinstance(exc, httpx.ConnectError):
        return f"Could not connect: {exc}"[:_ERROR_CHARS]
    return f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]


async def _send(client: httpx.AsyncClient, job: _Job, at: datetime, settings: Settings) -> _Outcome:
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        **signing.headers(job.secrets, job.msg_id, int(time.time()), job.body),
    }
    started = time.perf_counter()
    status_code: int | None = None
    error: str | None = None
    excerpt: str | None = None
    chunks = bytearray()
    try:
        # One deadline for the whole exchange: httpx's timeouts are per connect, read and write, so
        # a receiver that trickles its answer a byte at a time would otherwise hold us for hours.
        async with (
            asyncio.timeout(settings.webhook_timeout_seconds),
            client.stream("POST", job.url, content=job.body, headers=headers) as response,
        ):
            status_code = response.status_code
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
                if 300 <= status_code < 400:
                    error += " (redirects are not followed; register the final URL)"
            # The status is the receiver's answer; the body is read (bounded, best effort) only for
            # the delivery log.
            async for chunk in response.aiter_bytes():
                chunks.extend(chunk)
                if len(chunks) >= _EXCERPT_BYTES:
                    break
    except Exception as exc:
        if status_code is None:
            error = _describe(exc, settings)
    latency_ms = round((time.perf_counter() - started) * 1000)
    if chunks:
        excerpt = bytes(chunks[:_EXCERPT_BYTES]).decode("utf-8", "replace").replace("\x00", "") or None
    return _Outcome(job, at, status_code, latency_ms, error, excerpt)


async def _record(rt: Runtime, o: _Outcome, finished_at: datetime) -> bool:
    """Log one attempt and schedule its delivery; False (and nothing written) when the claim's lease
    is no longer this worker's."""
    settings = rt.settings
    attempts = o.job.attempts + 1
    values: dict[str, Any] = {
        "attempts": attempts,
        "last_attempt_at": o.attempted_at,
        "last_status_code": o.status_code,
        "last_error": o.error,
        "manual_pending": False,
    }
    if o.ok:
        values |= {
            "status": DeliveryStatus.succeeded.value,
            "succeeded_at": finished_at,
            "next_attempt_at": None,
        }
    else:
        retry_at = finished_at + timedelta(seconds=retry_delay_seconds(attempts, settings))
        window = timedelta(seconds=settings.webhook_retry_window_seconds)
        if retry_at > o.job.window_started_at + window:
            values |= {"status": DeliveryStatus.failed.value, "next_attempt_at": None}
        else:
            values |= {"next_attempt_at": retry_at}
    async with rt.db.sessionmaker() as session, session.begin():
        # Still ours only while the row holds the lease the claim wrote: another worker's claim, a
        # manual redelivery or a deleted endpoint has changed it, and a stale result changes nothing.
        mine = await session.scalar(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == o.job.delivery_id,
                WebhookDelivery.status == DeliveryStatus.pending.value,
                WebhookDelivery.next_attempt_at == o.job.lease,
            )
            .values(**values)
            .returning(WebhookDelivery.id)
        )
        if mine is None:
            log.warning("webhook attempt outlived its lease", delivery_id=str(o.job.delivery_id))
            return False
        await session.execute(
            insert(WebhookAttempt).values(
                delivery_id=o.job.delivery_id,
                attempted_at=o.attempted_at,
                trigger=(AttemptTrigger.manual if o.job.manual else AttemptTrigger.scheduled).value,
                status_code=o.status_code,
                latency_ms=o.latency_ms,
                error=o.error,
                response_excerpt=o.excerpt,
            )
        )
        await _endpoint_health(session, rt, [o], finished_at)
    return True


async def _endpoint_health(
    session: AsyncSession, rt: Runtime, outcomes: list[_Outcome], now: datetime
) -> None:
    healthy = {o.job.endpoint_id for o in outcomes if o.ok}
    failing = {o.job.endpoint_id for o in outcomes if not o.ok} - healthy
    if healthy:
        await session.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id.in_(healthy), WebhookEndpoint.failing_since.is_not(None))
            .values(failing_since=None)
        )
    if not failing:
        return
    await session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id.in_(failing), WebhookEndpoint.failing_since.is_(None))
        .values(failing_since=now)
    )
    cutoff = now - timedelta(seconds=rt.settings.webhook_disable_after_seconds)
    disabled = (
        await session.execute(
            update(WebhookEndpoint)
            .where(
                WebhookEndpoint.id.in_(failing),
                WebhookEndpoint.disabled_at.is_(None),
                WebhookEndpoint.deleted_at.is_(None),
                WebhookEndpoint.failing_since <= cutoff,
            )
            .values(
                disabled_at=now,
                disabled_reason="Every delivery failed since "
                + func.to_char(WebhookEndpoint.failing_since, 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
                + ".",
            )
            .returning(
                WebhookEndpoint.id,
                WebhookEndpoint.url,
                WebhookEndpoint.owner_email,
                WebhookEndpoint.failing_since,
            )
        )
    ).all()
    last_error = {o.job.endpoint_id: o.error for o in outcomes if not o.ok}
    for endpoint_id, url, owner_email, failing_since_at in disabled:
        failing_since = (failing_since_at or now).isoformat()
        log.warning(
            "webhook endpoint disabled", endpoint_id=str(endpoint_id), failing_since=str(failing_since)
        )
        await send_email(
            session,
            rt,
            to=owner_email,
            template=DISABLED_TEMPLATE,
            locale="en",
            context={
                "endpoint_id": str(endpoint_id),
                "url": url,
                "failing_since": failing_since,
                "disabled_at": now.isoformat(),
                "last_error": last_error.get(endpoint_id) or "",
            },
        )
        await audit.record(
            session,
            action="webhooks.endpoint_disabled",
            actor_id=None,
            actor_type="system",
            target_type="webhook_endpoint",
            target_id=endpoint_id,
            after={"failing_since": failing_since, "last_error": last_error.get(endpoint_id)},
        )


async def deliver_due(rt: Runtime, *, now: datetime | None = None, limit: int | None = None) -> int:
    """Send one batch of due deliveries, recording each result as it comes; returns how many were
    claimed. `now` is the scheduling clock; time spent sending moves it on."""
    settings = rt.settings
    now = now or utcnow()
    claimed_at = time.monotonic()
    jobs = await _claim(rt, now, limit or settings.webhook_delivery_batch_size)
    if not jobs:
        return 0
    # Start no attempt that could still be running when the lease ends (the claim's clock and the
    # lease are in `now`'s terms; the time spent since is measured).
    last_start = claimed_at + (jobs[0].lease - now).total_seconds() - settings.webhook_timeout_seconds - 10
    gate = asyncio.Semaphore(settings.webhook_delivery_concurrency)

    def clock() -> datetime:
        return now + timedelta(seconds=time.monotonic() - claimed_at)

    async def attempt(client: httpx.AsyncClient, job: _Job) -> None:
        async with gate:
            if time.monotonic() > last_start:
                return  # left to the lease's end, when it is due again
            outcome = await _send(client, job, clock(), settings)
        try:
            await _record(rt, outcome, clock())
        except Exception:  # the others go on; this one is due again when its lease ends
            log.exception("webhook attempt not recorded", delivery_id=str(job.delivery_id))

    async with (
        httpx.AsyncClient(
            transport=egress.GuardedTransport(settings),
            timeout=httpx.Timeout(settings.webhook_timeout_seconds),  # httpx's own default is 5 s
            follow_redirects=False,
            trust_env=False,
        ) as client,
        asyncio.TaskGroup() as tasks,
    ):
        for job in jobs:
            tasks.create_task(attempt(client, job))
    return len(jobs)


# -- the delivery log -----------------------------------------------------------------------------


async def list_deliveries(
    session: AsyncSession,
    owner: EndpointOwner,
    endpoint_id: uuid.UUID,
    *,
    status: DeliveryStatus | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[tuple[WebhookDelivery, str]], str | None]:
    endpoint = await get_endpoint(session, owner, endpoint_id)
    stmt = cast(
        Select[Any],
        select(WebhookDelivery, WebhookMessage.event_type)
        .join(WebhookMessage, WebhookMessage.id == WebhookDelivery.message_id)
        .where(WebhookDelivery.endpoint_id == endpoint.id),
    )
    if status is not None:
        stmt = stmt.where(WebhookDelivery.status == status.value)
    rows = [
        (d, t)
        for d, t in (
            await session.execute(paginate_by_id_desc(stmt, WebhookDelivery.id, cursor, limit))
        ).all()
    ]
    return split_page(rows, limit, lambda r: [r[0].id])


async def get_delivery(
    session: AsyncSession, owner: EndpointOwner, endpoint_id: uuid.UUID, delivery_id: uuid.UUID
) -> tuple[WebhookDelivery, WebhookMessage, list[WebhookAttempt]]:
    endpoint = await get_endpoint(session, owner, endpoint_id)
    row = (
        await session.execute(
            select(WebhookDelivery, WebhookMessage)
            .join(WebhookMessage, WebhookMessage.id == WebhookDelivery.message_id)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.endpoint_id == endpoint.id)
        )
    ).first()
    if row is None:
        raise DeliveryNotFound("No such delivery for this endpoint.")
    attempts = list(
        await session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id == delivery_id)
            .order_by(WebhookAttempt.id)
        )
    )
    return row[0], row[1], attempts


async def redeliver(
    session: AsyncSession,
    owner: EndpointOwner,
    endpoint_id: uuid.UUID,
    delivery_id: uuid.UUID,
    ctx: RequestContext,
) -> tuple[WebhookDelivery, WebhookMessage]:
    """Send the message again at once (whatever its status), with a fresh retry window."""
    endpoint = await get_endpoint(session, owner, endpoint_id)
    if endpoint.disabled_at is not None:
        raise EndpointDisabled("Enable the endpoint first (PATCH it with `enabled: true`).")
    delivery, message, _ = await get_delivery(session, owner, endpoint_id, delivery_id)
    now = utcnow()
    await session.refresh(delivery, with_for_update=True)
    delivery.status = DeliveryStatus.pending.value
    delivery.next_attempt_at = now
    delivery.window_started_at = now
    delivery.manual_pending = True
    await session.flush()
    await audit.record(
        session,
        action="webhooks.delivery_redelivered",
        actor_id=owner.actor_id,
        actor_type=owner.audit_actor_type,
        target_type="webhook_delivery",
        target_id=delivery.id,
        after={"endpoint_id": str(endpoint.id), "message_id": signing.message_id(message.id)},
        ctx=ctx,
    )
    return delivery, message
