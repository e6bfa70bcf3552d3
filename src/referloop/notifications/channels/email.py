"""Email delivery: SMTP (any relay: SendGrid, SES, Postfix; STARTTLS and AUTH from settings) or, in
development, a file sink that writes each message as `{var_dir}/mail/<event id>.eml`.

The Message-ID is derived from the outbox event id, so a message delivered again after a crash carries
the same Message-ID and receiving systems can tell it is the same message."""

from __future__ import annotations

import asyncio
import os
import uuid
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from pathlib import Path
from typing import Protocol

import aiosmtplib
import structlog

from referloop.config import EmailBackend, Settings
from referloop.notifications.rendering import RenderedEmail

log = structlog.get_logger(__name__)


def message_id_for(event_id: uuid.UUID, sender: str) -> str:
    domain = parseaddr(sender)[1].rpartition("@")[2] or "referloop.local"
    return f"<{event_id}@{domain}>"


def build_message(settings: Settings, event_id: uuid.UUID, to: str, rendered: RenderedEmail) -> EmailMessage:
    message = EmailMessage()
    message["From"] = settings.email_from
    message["To"] = to
    message["Subject"] = rendered.subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = message_id_for(event_id, settings.email_from)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    # After the body: set_content() drops every Content-* header set before it.
    message["Content-Language"] = rendered.locale
    return message


class EmailSender(Protocol):
    async def send(self, message: EmailMessage) -> None: ...


class SmtpSender:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def send(self, message: EmailMessage) -> None:
        s = self.settings
        password = s.smtp_password.get_secret_value()
        await aiosmtplib.send(
            message,
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_username or None,
            password=password or None,
            # None: STARTTLS whenever the relay offers it; True: the relay must offer it (SendGrid
            # and SES on 587); False: plain text (a local relay only).
            start_tls=s.smtp_starttls,
            timeout=s.smtp_timeout_seconds,
        )
        log.info("email sent", message_id=message["Message-ID"], host=s.smtp_host)


class FileSender:
    """Development sink; one file per event id, so a redelivery overwrites rather than duplicates."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _write(self, name: str, data: bytes) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / name
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # a reader never sees half a message
        return path

    async def send(self, message: EmailMessage) -> None:
        name = str(message["Message-ID"]).strip("<>").partition("@")[0] + ".eml"
        path = await asyncio.to_thread(self._write, name, message.as_bytes())
        log.info("email written", path=str(path), to=message["To"], subject=message["Subject"])


def email_sender(settings: Settings) -> EmailSender:
    if settings.email_backend is EmailBackend.smtp:
        return SmtpSender(settings)
    return FileSender(settings.var_dir / "mail")
