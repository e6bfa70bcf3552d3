"""Webhook consumers and jobs: domain events become deliveries; a periodic job sends what is due.

Handlers are not told their event's topic, and reward events look alike (pending, released and
reversed carry the same keys), so each topic has its own consumer."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.outbox.consumers import Handler, consumer
from referloop.core.periodic import periodic
from referloop.runtime import Runtime
from referloop.webhooks.events import TOPIC_EVENTS
from referloop.webhooks.service.deliveries import deliver_due, fan_out

FAN_OUT_CONSUMER = "webhooks.fan_out"
DELIVER_JOB = "webhooks.deliver"


def _fan_out_handler(topic: str) -> Handler:
    async def handle(
        session: AsyncSession, rt: Runtime, event_id: uuid.UUID, payload: dict[str, Any]
    ) -> None:
        await fan_out(session, event_id, topic, payload)

    handle.__name__ = f"fan_out_{topic.replace('.', '_')}"
    return handle


def consumer_name(topic: str) -> str:
    return f"{FAN_OUT_CONSUMER}.{topic}"


for _topic in TOPIC_EVENTS:
    consumer(consumer_name(_topic), _topic)(_fan_out_handler(_topic))


@periodic(DELIVER_JOB, every=1.0, full_batch=100)
async def deliver_webhooks(rt: Runtime) -> int:
    return await deliver_due(rt)
