"""Test helpers for the async backbone: a real SMTP server (aiosmtpd) on a free loopback port, a
RabbitMQ namespace of one's own, and a real `referloop worker` process."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import os
import sys
import uuid
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aio_pika
from aiosmtpd.smtp import SMTP, Envelope, Session

from referloop.config import Settings
from referloop.core.outbox.broker import Topology


@dataclass
class SmtpInbox:
    """What a real SMTP server on 127.0.0.1:`port` accepted."""

    port: int = 0
    messages: list[tuple[list[str], EmailMessage]] = field(default_factory=list)

    def to(self, address: str) -> list[EmailMessage]:
        return [m for rcpts, m in self.messages if address in rcpts]

    async def wait_for(self, address: str, count: int = 1, timeout: float = 20.0) -> list[EmailMessage]:
        async with asyncio.timeout(timeout):
            while len(self.to(address)) < count:
                await asyncio.sleep(0.05)
        return self.to(address)

    # aiosmtpd handler hook
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append((list(envelope.rcpt_tos), parsed))
        return "250 Message accepted for delivery"


async def start_smtp_server() -> tuple[SmtpInbox, asyncio.Server]:
    inbox = SmtpInbox()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(inbox, hostname="smtp.test"), "127.0.0.1", 0)
    inbox.port = server.sockets[0].getsockname()[1]
    return inbox, server


@dataclass
class BrokerNamespace:
    """Exchanges and queues under a name of the test's own, deleted afterwards: concurrent test runs
    on one broker never take each other's messages. Name every consumer whose queues get declared:
    a real `referloop worker` declares nine quorum queues for each consumer it knows (`all_consumers()`),
    and leaked quorum queues pile up until the broker runs out of file handles and stops accepting
    connections."""

    amqp_url: str
    name: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:12]}")
    _used: list[tuple[Settings, list[str]]] = field(default_factory=list)

    def settings(self, base: Settings, consumers: list[str], **overrides: Any) -> Settings:
        settings = base.model_copy(
            update={"amqp_url": self.amqp_url, "amqp_namespace": self.name, **overrides}
        )
        self._used.append((settings, consumers))
        return settings

    async def cleanup(self) -> None:
        # Bounded: a broker that stops answering must fail this test, not hang the test process.
        connection = await asyncio.wait_for(aio_pika.connect(self.amqp_url), 30)
        try:
            for settings, consumers in self._used:
                channel = await connection.channel()
                await Topology(settings).delete_all(channel, consumers)
                await channel.close()
        finally:
            await connection.close()


def all_consumers() -> list[str]:
    """Every consumer a `referloop worker` process runs (and declares queues for)."""
    from referloop.worker import load_task_modules

    return [c.name for c in load_task_modules().all()]


def referloop_command() -> list[str]:
    return [sys.executable, "-m", "referloop"]


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a `referloop worker` process on the test's database, Redis and keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFERLOOP_")}
    env |= {
        "REFERLOOP_ENV": "test",
        "REFERLOOP_DATABASE_URL": settings.database_url,
        "REFERLOOP_REDIS_URL": settings.redis_url,
        "REFERLOOP_VAR_DIR": str(Path(settings.var_dir).resolve()),
        "REFERLOOP_LOG_LEVEL": "WARNING",
        "REFERLOOP_OUTBOX_POLL_INTERVAL_SECONDS": "0.1",
        "REFERLOOP_DB_POOL_SIZE": "5",
        # env=test refuses to start without its secrets; the same keys as the test's own runtime.
        "REFERLOOP_JWT_PRIVATE_KEYS": json.dumps([k.get_secret_value() for k in settings.jwt_private_keys]),
        "REFERLOOP_FIELD_ENCRYPTION_KEYS": settings.field_encryption_keys.get_secret_value(),
    }
    env |= {f"REFERLOOP_{k.upper()}": v for k, v in extra.items()}
    return env


async def start_worker(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *referloop_command(),
        "worker",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def run_cli(env: dict[str, str], *args: str, timeout: float = 60.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *referloop_command(),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def wait_for_output(proc: asyncio.subprocess.Process, text: str, timeout: float = 60.0) -> None:
    """Read the worker's stdout (JSON log lines) until one contains `text`."""
    assert proc.stdout is not None
    async with asyncio.timeout(timeout):
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise AssertionError(f"worker exited before logging {text!r}")
            if text in line.decode(errors="replace"):
                return
