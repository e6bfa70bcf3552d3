"""Notifications other domains ask for. They are outbox events, so a message is sent only if the
transaction that asked for it commits, and is sent even if the process dies right after."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.config import Environment
from referloop.core.errors import ServiceUnavailable
from referloop.core.outbox import enqueue
from referloop.runtime import Runtime

EMAIL_TOPIC = "notifications.email"
SMS_TOPIC = "notifications.sms"
_CONTEXT_AAD = "notifications.context"


def seal_context(rt: Runtime, context: dict[str, Any]) -> str:
    """Template contexts can hold codes and personal data: the outbox row keeps them encrypted."""
    return rt.cipher.encrypt(orjson.dumps(context).decode(), context=_CONTEXT_AAD)


def open_context(rt: Runtime, sealed: str) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(rt.cipher.decrypt(sealed, context=_CONTEXT_AAD))
    return value


async def send_email(
    session: AsyncSession, rt: Runtime, *, to: str, template: str, locale: str, context: dict[str, Any]
) -> None:
    await enqueue(
        session,
        EMAIL_TOPIC,
        {
            "to": to,
            "template": template,
            "locale": locale,
            "context": seal_context(rt, context),
        },
    )


class SmsUnavailable(ServiceUnavailable):
    code = "sms_unavailable"
    title = "Text messages are not available"


def sms_available(rt: Runtime) -> bool:
    """No SMS provider exists yet: outside production texts go to a file sink (`var/sms/`); in
    production they are refused rather than written to a file that nobody reads."""
    return rt.settings.env is not Environment.production


async def send_sms(
    session: AsyncSession, rt: Runtime, *, to: str, template: str, locale: str, context: dict[str, Any]
) -> None:
    if not sms_available(rt):
        raise SmsUnavailable("We cannot send text messages yet; verify your email address instead.")
    await enqueue(
        session,
        SMS_TOPIC,
        {
            "to": to,
            "template": template,
            "locale": locale,
            "context": seal_context(rt, context),
        },
    )
