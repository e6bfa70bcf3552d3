"""Consumers of notification events: render the template in the member's locale and deliver it."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.outbox.consumers import consumer
from referloop.notifications.channels.email import build_message, email_sender
from referloop.notifications.channels.sms import FileSmsSink
from referloop.notifications.rendering import render_email, render_sms
from referloop.notifications.service import EMAIL_TOPIC, SMS_TOPIC, open_context
from referloop.runtime import Runtime


@consumer("notifications.email", EMAIL_TOPIC)
async def deliver_email(
    session: AsyncSession, rt: Runtime, event_id: uuid.UUID, payload: dict[str, Any]
) -> None:
    rendered = render_email(payload["template"], payload["locale"], open_context(rt, payload["context"]))
    message = build_message(rt.settings, event_id, payload["to"], rendered)
    await email_sender(rt.settings).send(message)


@consumer("notifications.sms", SMS_TOPIC)
async def deliver_sms(
    session: AsyncSession, rt: Runtime, event_id: uuid.UUID, payload: dict[str, Any]
) -> None:
    locale, body = render_sms(payload["template"], payload["locale"], open_context(rt, payload["context"]))
    sink = FileSmsSink(rt.settings.var_dir / "sms", log_body=rt.settings.is_development)
    await sink.send(event_id, to=payload["to"], body=body, locale=locale, template=payload["template"])
