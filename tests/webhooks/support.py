"""A webhook receiver on a real loopback port (uvicorn in a thread) that records what it got and
fails on demand, and helpers that emit domain events through the real consumers."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from referloop.core.outbox.consumers import handle_once, registry
from referloop.core.outbox.models import OutboxEvent
from referloop.runtime import Runtime
from referloop.webhooks import tasks as webhook_tasks
from referloop.webhooks.service.deliveries import deliver_due
from tests.fakes.server import LoopbackServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    """POST anything: answers 200 unless told to fail. `fail_next(n, status)` fails the next n."""

    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _failures: list[int] = field(default_factory=list)
    _server: LoopbackServer | None = None
    url: str = ""
    hold_seconds: float = 0.0  # answer this late (a slow receiver)
    trickle_seconds: float = 0.0  # answer 200 at once, then the body one byte per this many seconds

    def fail_next(self, count: int, status: int = 500) -> None:
        with self.lock:
            self._failures.extend([status] * count)

    def fail_always(self, status: int = 503) -> None:
        self.fail_next(10_000, status)

    def recover(self) -> None:
        with self.lock:
            self._failures.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        body = await request.body()
        with self.lock:
            status = self._failures.pop(0) if self._failures else 200
            self.requests.append(
                Received(request.url.path, {k.lower(): v for k, v in request.headers.items()}, body, status)
            )
        if self.hold_seconds:
            await asyncio.sleep(self.hold_seconds)
        if self.trickle_seconds:
            await StreamingResponse(self._trickle(self.trickle_seconds))(scope, receive, send)
            return
        await PlainTextResponse("ok" if status == 200 else "nope", status_code=status)(scope, receive, send)

    @staticmethod
    async def _trickle(every: float) -> AsyncIterator[bytes]:
        for _ in range(600):
            yield b"."
            await asyncio.sleep(every)

    def start(self) -> str:
        self._server = LoopbackServer(self)
        base = self._server.start()
        self.url = f"{base}/hooks/{uuid.uuid4().hex[:8]}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    def got(self) -> list[Received]:
        with self.lock:
            return list(self.requests)


def referral_event(
    university_id: str, program_id: str | None = None, *, to_state: str = "applied"
) -> dict[str, Any]:
    return {
        "referral_id": str(uuid.uuid4()),
        "referrer_id": str(uuid.uuid4()),
        "program_id": program_id or str(uuid.uuid4()),
        "university_id": university_id,
        "campaign_id": str(uuid.uuid4()),
        "from_state": "signed_up",
        "to_state": to_state,
        "at": datetime.now(UTC).isoformat(),
        "reason": None,
    }


def reward_event(university_id: str, program_id: str | None = None) -> dict[str, Any]:
    return {
        "reward_id": str(uuid.uuid4()),
        "referral_id": str(uuid.uuid4()),
        "member_id": str(uuid.uuid4()),
        "role": "referrer",
        "milestone": "enrolled",
        "amount": 100_000,
        "currency": "INR",
        "program_id": program_id or str(uuid.uuid4()),
        "university_id": university_id,
        "campaign_id": str(uuid.uuid4()),
        "at": datetime.now(UTC).isoformat(),
    }


async def emit(rt: Runtime, topic: str, payload: dict[str, Any]) -> uuid.UUID:
    """Hand an event to the webhook consumer of its topic, as the worker would."""
    consumer = registry.get(webhook_tasks.consumer_name(topic))
    assert consumer is not None, topic
    event_id = uuid.uuid4()
    assert await handle_once(rt, consumer, event_id, payload)
    return event_id


async def relay(rt: Runtime, referral_id: str) -> int:
    """Hand a referral's outbox events (written by the real lifecycle) to the webhook consumers, as
    the worker would; returns how many."""
    async with rt.db.sessionmaker() as session:
        events = list(
            await session.scalars(
                select(OutboxEvent)
                .where(OutboxEvent.payload["referral_id"].astext == referral_id)
                .order_by(OutboxEvent.id)
            )
        )
    handled = 0
    for event in events:
        consumer = registry.get(webhook_tasks.consumer_name(event.topic))
        if consumer is not None:
            await handle_once(rt, consumer, event.id, dict(event.payload))
            handled += 1
    return handled


async def deliver(rt: Runtime, now: datetime | None = None) -> int:
    """Run the sender until nothing more is due at `now` (the clock the test controls)."""
    total = 0
    for _ in range(50):
        sent = await deliver_due(rt, now=now)
        total += sent
        if sent < rt.settings.webhook_delivery_batch_size:
            return total
    raise AssertionError("the sender never ran dry")
