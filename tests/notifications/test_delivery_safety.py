"""Codes reach people or visibly fail: production never writes a text message to a file, and SMTP
upgrades to TLS whenever the relay offers it."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import ipaddress
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.smtp import SMTP
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import FastAPI
from sqlalchemy import func, select

from referloop.config import EmailBackend, Environment
from referloop.core.outbox.drain import drain_once
from referloop.core.outbox.models import OutboxEvent
from referloop.notifications import service as notifications
from referloop.notifications.channels.email import SmtpSender, build_message
from referloop.notifications.rendering import render_email
from referloop.runtime import Runtime
from referloop.worker import load_task_modules
from tests.conftest import random_ip
from tests.factories import new_email, new_phone, register_member
from tests.notifications.support import SmtpInbox

CONTEXT = {"display_name": "Asha", "code": "123456", "minutes": 10}


def with_settings(rt: Runtime, **overrides: Any) -> Runtime:
    return dataclasses.replace(rt, settings=rt.settings.model_copy(update=overrides))


async def outbox_rows_to(rt: Runtime, to: str) -> int:
    async with rt.db.sessionmaker() as session:
        count = await session.scalar(
            select(func.count()).select_from(OutboxEvent).where(OutboxEvent.payload["to"].astext == to)
        )
    return int(count or 0)


@pytest.fixture
async def production_client(app_factory: Callable[..., FastAPI]) -> AsyncIterator[httpx.AsyncClient]:
    app = app_factory(env="production")
    transport = httpx.ASGITransport(app=app, client=(random_ip(), 50000))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://test", headers={"X-Forwarded-For": random_ip()}
    ) as c:
        yield c


async def test_production_refuses_phone_verification_and_sends_nothing(
    production_client: httpx.AsyncClient, runtime: Runtime
) -> None:
    phone = new_phone()
    member = await register_member(production_client, phone=phone)
    r = await production_client.post("/v1/auth/verify/phone/request", headers=member.auth)
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "sms_unavailable"
    assert "email" in r.json()["detail"]
    assert await outbox_rows_to(runtime, phone) == 0
    # Email verification is unaffected.
    emails = await outbox_rows_to(runtime, member.email or "")
    r = await production_client.post("/v1/auth/verify/email/request", headers=member.auth)
    assert r.status_code == 202
    assert await outbox_rows_to(runtime, member.email or "") == emails + 1


async def test_a_production_worker_never_writes_a_text_to_a_file(runtime: Runtime, tmp_path: Path) -> None:
    queued = with_settings(runtime, amqp_url="", var_dir=tmp_path)  # queued outside production
    phone = new_phone()
    async with queued.db.sessionmaker() as session, session.begin():
        await notifications.send_sms(
            session, queued, to=phone, template="verify_phone", locale="en", context=CONTEXT
        )
        event_id = await session.scalar(
            select(OutboxEvent.id).where(OutboxEvent.payload["to"].astext == phone)
        )
    assert event_id is not None
    production = with_settings(queued, env=Environment.production)
    async with asyncio.timeout(20):
        while True:
            await drain_once(production, load_task_modules())
            async with production.db.sessionmaker() as session:
                event = await session.get(OutboxEvent, event_id)
            assert event is not None
            if event.attempts:
                break
    assert event.published_at is None
    assert event.last_error is not None and "no SMS provider" in event.last_error
    assert not (tmp_path / "sms").exists()


def _certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smtp.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "relay.pem", directory / "relay.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_smtp_upgrades_to_tls_when_the_relay_offers_it(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert_path, key_path = _certificate(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_path, key_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_path))  # the client trusts this relay's certificate
    inbox = SmtpInbox()
    loop = asyncio.get_running_loop()
    # A relay that refuses mail before STARTTLS: only an upgraded connection delivers.
    server = await loop.create_server(
        lambda: SMTP(inbox, hostname="smtp.test", tls_context=server_tls, require_starttls=True),
        "127.0.0.1",
        0,
    )
    try:
        port = server.sockets[0].getsockname()[1]
        settings = runtime.settings.model_copy(
            update={"email_backend": EmailBackend.smtp, "smtp_host": "127.0.0.1", "smtp_port": port}
        )
        assert settings.smtp_starttls is None  # the default
        to = new_email()
        rendered = render_email("verify_email", "en", CONTEXT)
        await SmtpSender(settings).send(build_message(settings, uuid.uuid4(), to, rendered))
        assert len(inbox.to(to)) == 1
    finally:
        server.close()
        await server.wait_closed()
