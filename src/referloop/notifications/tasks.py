"""Consumers of notification events: render the template in the member's locale and deliver it."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.faults import maybe_crash
from referloop.core.outbox.consumers import consumer
from referloop.notifications.channels.email import build_message, email_sender
from referloop.notifications.channels.sms import FileSmsSink
from referloop.notifications.rendering import render_email, render_sms
from referloop.notifications.service import EMAIL_TOPIC, SMS_TOPIC, open_context, sms_available
from referloop.runtime import Runtime

# Fault point for crash tests: the SMTP relay accepted the message, its inbox record is not committed.
FAULT_AFTER_SEND = "notifications.email.after_send"


@consumer("notifications.email", EMAIL_TOPIC)
async def deliver_email(
    session: AsyncSession, rt: Runtime, event_id: uuid.UUID, payload: dict[str, Any]
) -> None:
    """Exactly once up to the SMTP send, at least once past it. A worker that dies before the relay
    accepts the message sends nothing, and the redelivered event sends it once. SMTP has no way to
    make a send and our commit one step, so a worker that dies in the moment between the relay's
    "250 OK" and the commit of the inbox record (just after this returns) sends it again on
    redelivery: with the same Message-ID (the event id), by which mail clients and relays that
    deduplicate recognise it. Marking "sending" in a transaction of its own first would not narrow
    that moment (the inbox commit follows the send at once) and would turn a crash before the send
    into a lost email, which is worse than a duplicate for a verification code."""
    rendered = render_email(payload["template"], payload["locale"], open_context(rt, payload["context"]))
    message = build_message(rt.settings, event_id, payload["to"], rendered)
    await email_sender(rt.settings).send(message)
    maybe_crash(rt.settings, FAULT_AFTER_SEND)


@consumer("notifications.sms", SMS_TOPIC)
async def deliver_sms(
    session: AsyncSession, rt: Runtime, event_id: uuid.UUID, payload: dict[str, Any]
) -> None:
    if not sms_available(rt):  # queued before production refused texts: fail it, never fake it
        raise RuntimeError("no SMS provider is configured in production; this text was not sent")
    locale, body = render_sms(payload["template"], payload["locale"], open_context(rt, payload["context"]))
    sink = FileSmsSink(rt.settings.var_dir / "sms", log_body=rt.settings.is_development)
    await sink.send(event_id, to=payload["to"], body=body, locale=locale, template=payload["template"])
