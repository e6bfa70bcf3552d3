"""Emails and SMS from the outbox: templates per locale, the file sink, real SMTP, and a worker that
crashes mid-delivery and still sends each email exactly once."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import json
import signal
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from referloop.config import EmailBackend
from referloop.core.outbox.consumers import FAULT_BEFORE_HANDLE, ConsumerRegistry
from referloop.core.outbox.drain import drain_once
from referloop.core.outbox.models import InboxRecord, OutboxEvent
from referloop.notifications import service as notifications
from referloop.notifications.rendering import UnknownTemplateError, render_email
from referloop.notifications.tasks import FAULT_AFTER_SEND
from referloop.runtime import Runtime
from referloop.worker import load_task_modules
from tests.factories import latest_code, new_email, new_phone, register_member
from tests.notifications.support import (
    BrokerNamespace,
    SmtpInbox,
    all_consumers,
    start_worker,
    worker_env,
)

CONTEXT = {"display_name": "Asha", "code": "123456", "minutes": 10}


def with_settings(rt: Runtime, **overrides: Any) -> Runtime:
    return dataclasses.replace(rt, settings=rt.settings.model_copy(update=overrides))


def smtp_runtime(rt: Runtime, smtp: SmtpInbox) -> Runtime:
    return with_settings(
        rt, amqp_url="", email_backend=EmailBackend.smtp, smtp_host="127.0.0.1", smtp_port=smtp.port
    )


async def queue_email(
    rt: Runtime,
    to: str,
    template: str = "verify_email",
    locale: str = "en",
    context: dict[str, Any] | None = None,
) -> uuid.UUID:
    async with rt.db.sessionmaker() as session, session.begin():
        await notifications.send_email(
            session, rt, to=to, template=template, locale=locale, context=context or CONTEXT
        )
        event_id = await session.scalar(
            select(OutboxEvent.id)
            .where(OutboxEvent.payload["to"].astext == to)
            .order_by(OutboxEvent.id.desc())
        )
    assert event_id is not None
    return event_id


async def drain_until_published(rt: Runtime, registry: ConsumerRegistry, event_id: uuid.UUID) -> None:
    async with asyncio.timeout(20):
        while True:
            await drain_once(rt, registry)
            async with rt.db.sessionmaker() as session:
                event = await session.get(OutboxEvent, event_id)
            assert event is not None
            if event.published_at is not None:
                return
            assert event.last_error is None, event.last_error
            await asyncio.sleep(0.05)


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    return str(text.get_content()), str(html.get_content())


# --- rendering -----------------------------------------------------------------------------------------


def test_email_has_text_and_html_in_english_with_the_html_escaped() -> None:
    rendered = render_email("verify_email", "en", {**CONTEXT, "display_name": '<b>Asha & "Co"</b>'})
    assert rendered.locale == "en"
    assert rendered.subject == "123456 is your Referloop verification code"
    assert 'Hi <b>Asha & "Co"</b>,' in rendered.text and "expires in 10 minutes" in rendered.text
    assert "&lt;b&gt;Asha &amp; &#34;Co&#34;&lt;/b&gt;" in rendered.html and "<b>Asha" not in rendered.html
    assert '<html lang="en">' in rendered.html and ">123456<" in rendered.html


@pytest.mark.parametrize(
    ("locale", "used", "phrase"),
    [
        ("hi", "hi", "नमस्ते Asha"),
        ("hi-IN", "hi", "नमस्ते Asha"),
        ("en-GB", "en", "Hi Asha"),
        ("fr", "en", "Hi Asha"),
        ("../../etc", "en", "Hi Asha"),
    ],
)
def test_locale_falls_back_to_language_then_english(locale: str, used: str, phrase: str) -> None:
    rendered = render_email("reset_password", locale, CONTEXT)
    assert rendered.locale == used
    assert phrase in rendered.text and phrase in rendered.html
    assert "123456" in rendered.text


def test_unknown_template_or_missing_context_fails_loudly() -> None:
    with pytest.raises(UnknownTemplateError):
        render_email("no_such_template", "en", CONTEXT)
    with pytest.raises(UnknownTemplateError):
        render_email("../verify_email", "en", CONTEXT)
    with pytest.raises(Exception, match="code"):
        render_email("verify_email", "en", {"display_name": "Asha", "minutes": 10})


# --- delivery ------------------------------------------------------------------------------------------


async def test_file_backend_writes_an_eml_per_event(runtime: Runtime, tmp_path: Path) -> None:
    rt = with_settings(runtime, amqp_url="", email_backend=EmailBackend.file, var_dir=tmp_path)
    to = new_email()
    event_id = await queue_email(rt, to, locale="hi")
    await drain_until_published(rt, load_task_modules(), event_id)

    # One file per event, named by its id (other tests' pending emails may be drained here too).
    path = tmp_path / "mail" / f"{event_id}.eml"
    assert not list((tmp_path / "mail").glob("*.tmp"))
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message["To"] == to and message["Message-ID"] == f"<{event_id}@referloop.local>"
    assert message["Content-Language"] == "hi"
    text, html = parts(message)
    assert "123456" in text and "नमस्ते Asha" in text and "123456" in html


async def test_smtp_delivery_reaches_the_server_once(runtime: Runtime, smtp_server: SmtpInbox) -> None:
    rt = smtp_runtime(runtime, smtp_server)
    registry = load_task_modules()
    to = new_email()
    event_id = await queue_email(rt, to, template="reset_password")
    await drain_until_published(rt, registry, event_id)

    [message] = await smtp_server.wait_for(to)
    assert message["Subject"] == "Reset your Referloop password"
    assert message["From"] == rt.settings.email_from
    assert message["Message-ID"] == f"<{event_id}@referloop.local>"
    assert message.get_content_type() == "multipart/alternative"
    text, html = parts(message)
    assert "123456" in text and "123456" in html

    # Delivered again (a worker died before marking the row): the inbox stops a second email.
    async with rt.db.sessionmaker() as session, session.begin():
        event = await session.get(OutboxEvent, event_id)
        assert event is not None
        event.published_at = None
    await drain_until_published(rt, registry, event_id)
    await asyncio.sleep(0.2)
    assert len(smtp_server.to(to)) == 1


async def test_smtp_failure_backs_off_and_sends_nothing(runtime: Runtime, smtp_server: SmtpInbox) -> None:
    rt = with_settings(smtp_runtime(runtime, smtp_server), smtp_port=1)  # nothing listens there
    to = new_email()
    event_id = await queue_email(rt, to)
    async with asyncio.timeout(20):
        while True:
            await drain_once(rt, load_task_modules())
            async with rt.db.sessionmaker() as session:
                event = await session.get(OutboxEvent, event_id)
            assert event is not None
            if event.attempts:
                break
    assert event.published_at is None and event.last_error is not None
    assert smtp_server.to(to) == []
    async with rt.db.sessionmaker() as session:
        assert await session.get(InboxRecord, ("notifications.email", event_id)) is None


async def test_sms_sink_writes_the_message(runtime: Runtime, tmp_path: Path) -> None:
    rt = with_settings(runtime, amqp_url="", var_dir=tmp_path)
    phone = new_phone()
    async with rt.db.sessionmaker() as session, session.begin():
        await notifications.send_sms(
            session, rt, to=phone, template="verify_phone", locale="hi-IN", context=CONTEXT
        )
        event_id = await session.scalar(
            select(OutboxEvent.id).where(OutboxEvent.payload["to"].astext == phone)
        )
    assert event_id is not None
    await drain_until_published(rt, load_task_modules(), event_id)
    record = json.loads((tmp_path / "sms" / f"{event_id}.json").read_text())
    assert record["to"] == phone and record["locale"] == "hi"
    assert record["body"] == "123456 आपका Referloop सत्यापन कोड है। यह 10 मिनट में समाप्त हो जाएगा।"


async def test_member_gets_the_verification_email_in_their_language(
    client: httpx.AsyncClient, runtime: Runtime, smtp_server: SmtpInbox
) -> None:
    rt = smtp_runtime(runtime, smtp_server)
    registry = load_task_modules()
    member = await register_member(client)
    assert member.email is not None
    first_code = await latest_code(runtime, member.email)

    r = await client.patch("/v1/me", json={"locale": "hi-IN"}, headers=member.auth)
    assert r.status_code == 200, r.text
    r = await client.post("/v1/auth/verify/email/request", headers=member.auth)
    assert r.status_code == 202, r.text
    second_code = await latest_code(runtime, member.email)

    async with asyncio.timeout(20):
        while len(smtp_server.to(member.email)) < 2:
            await drain_once(rt, registry)
            await asyncio.sleep(0.05)
    english, hindi = sorted(
        smtp_server.to(member.email), key=lambda m: str(m["Message-ID"])
    )  # uuid7: by time
    assert english["Content-Language"] == "en" and first_code in english["Subject"]
    assert hindi["Content-Language"] == "hi" and second_code in hindi["Subject"]
    assert "सत्यापित" in parts(hindi)[0] and second_code in parts(hindi)[1]


# --- crash test ----------------------------------------------------------------------------------------


async def test_worker_killed_mid_delivery_sends_the_email_exactly_once(
    runtime: Runtime, smtp_server: SmtpInbox, tmp_path: Path
) -> None:
    await crash_and_restart(runtime, smtp_server, tmp_path, {"amqp_url": ""})


async def test_worker_killed_mid_delivery_with_a_broker_sends_the_email_exactly_once(
    runtime: Runtime, smtp_server: SmtpInbox, tmp_path: Path, broker_ns: BrokerNamespace
) -> None:
    """The same through RabbitMQ: the unacked message goes back to the queue when the worker dies,
    the restarted worker takes it again (and the relay may publish it again: the inbox absorbs it)."""
    broker_ns.settings(runtime.settings, all_consumers())  # the worker declares every consumer's queues
    await crash_and_restart(
        runtime, smtp_server, tmp_path, {"amqp_url": broker_ns.amqp_url, "amqp_namespace": broker_ns.name}
    )


async def test_worker_killed_after_the_smtp_send_sends_it_again_with_the_same_message_id(
    runtime: Runtime, smtp_server: SmtpInbox, tmp_path: Path
) -> None:
    """Past the SMTP send the guarantee is at least once: a worker that dies between the relay's
    "250 OK" and the inbox commit sends the email again after restart, with the same Message-ID."""
    await crash_and_restart(runtime, smtp_server, tmp_path, {"amqp_url": ""}, fault=FAULT_AFTER_SEND)


async def crash_and_restart(
    runtime: Runtime,
    smtp_server: SmtpInbox,
    tmp_path: Path,
    env: dict[str, str],
    fault: str = FAULT_BEFORE_HANDLE,
) -> None:
    """A real worker process dies (exit 137, like kill -9) at `fault`: after taking our email and
    before recording it as handled. A restarted worker delivers it. Before the send, the SMTP server
    gets it exactly once; after it, a second time with the same Message-ID."""
    extra = {"email_backend": "smtp", "smtp_host": "127.0.0.1", "smtp_port": str(smtp_server.port), **env}
    # Deliver what other tests left pending first, so that the first event this worker takes is ours.
    backlog = with_settings(runtime, amqp_url="", var_dir=tmp_path)
    while await drain_once(backlog, load_task_modules()):
        pass
    to = new_email()
    event_id = await queue_email(runtime, to)
    sent_before_crash = 1 if fault == FAULT_AFTER_SEND else 0

    crashing = await start_worker(worker_env(runtime.settings, fault_inject=fault, **extra))
    try:
        _, err = await asyncio.wait_for(crashing.communicate(), 60)
    finally:
        if crashing.returncode is None:  # it never reached the fault: do not leave it running
            crashing.kill()
            await crashing.wait()
    assert crashing.returncode == 137, err.decode()
    assert f"fault injected at {fault}" in err.decode()
    assert len(smtp_server.to(to)) == sent_before_crash
    async with runtime.db.sessionmaker() as session:
        assert await session.get(InboxRecord, ("notifications.email", event_id)) is None

    worker = await start_worker(worker_env(runtime.settings, **extra))
    try:
        messages = await smtp_server.wait_for(to, count=sent_before_crash + 1, timeout=60)
        assert {m["Message-ID"] for m in messages} == {f"<{event_id}@referloop.local>"}
        async with asyncio.timeout(20):
            while True:
                async with runtime.db.sessionmaker() as session:
                    event = await session.get(OutboxEvent, event_id)
                    handled = await session.get(InboxRecord, ("notifications.email", event_id))
                assert event is not None
                if event.published_at is not None and handled is not None:
                    break
                await asyncio.sleep(0.1)
        worker.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(worker.communicate(), 30)
        assert worker.returncode == 0, err.decode()
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
    assert len(smtp_server.to(to)) == sent_before_crash + 1
