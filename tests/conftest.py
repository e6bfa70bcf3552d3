"""Test services: real PostgreSQL, Redis and RabbitMQ.

Each xdist worker gets its own database, built by the Alembic migrations, and its own Redis
database number. Tests make unique data (fresh emails, phones, IPs), so they never collide."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from referloop.app import create_app
from referloop.cli import run_migrations
from referloop.config import Environment, Settings
from referloop.core.security.tokens import generate_private_pem
from referloop.runtime import Runtime

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


# Tests run as env=test, which refuses to start without its secrets (only development makes its own):
# each test process generates a signing key and a field-encryption key, handed to every Settings below
# and exported (see `_secrets_in_environment`) to every `referloop` process a test starts and every Settings()
# read from the environment, so that they all sign and decrypt alike.
TEST_JWT_PRIVATE_KEY = generate_private_pem().decode()
TEST_FIELD_ENCRYPTION_KEYS = f"test1:{base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip('=')}"
TEST_SECRET_ENV = {
    "REFERLOOP_JWT_PRIVATE_KEYS": json.dumps([TEST_JWT_PRIVATE_KEY]),
    "REFERLOOP_FIELD_ENCRYPTION_KEYS": TEST_FIELD_ENCRYPTION_KEYS,
}


@pytest.fixture(scope="session", autouse=True)
def _secrets_in_environment() -> Iterator[dict[str, str]]:
    saved = {name: os.environ.get(name) for name in TEST_SECRET_ENV}
    os.environ.update(TEST_SECRET_ENV)
    yield TEST_SECRET_ENV
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def _service_url(env_var: str, default: str, port: int, name: str) -> str | None:
    url = os.environ.get(env_var, default)
    if _reachable(url, port):
        return url
    if IN_CI:
        pytest.exit(f"{name} is not reachable at {url}: CI needs it running", returncode=3)
    return None


def _worker_index(worker_id: str) -> int:
    return 0 if worker_id == "master" else int(worker_id.removeprefix("gw"))


@pytest.fixture(scope="session")
def worker_id_(request: pytest.FixtureRequest) -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "master")


@pytest.fixture(scope="session")
def database_url(worker_id_: str) -> Iterator[str]:
    admin_url = _service_url(
        "TEST_DATABASE_URL", "postgresql://root@127.0.0.1:5432/postgres", 5432, "PostgreSQL"
    )
    if admin_url is None:
        from referloop.core.embedded import start_embedded_postgres

        admin_url = start_embedded_postgres(Path("var/test"))
    # Unique per test run as well as per worker, so that concurrent runs on one machine never meet.
    run_id = os.getpid() if worker_id_ == "master" else os.getppid()
    name = f"referloop_test_{worker_id_}_{run_id}"

    async def recreate() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(recreate())
    parts = urlsplit(admin_url)
    url = parts._replace(path=f"/{name}").geturl()
    run_migrations(url)
    yield url
    if not os.environ.get("REFERLOOP_KEEP_TEST_DB"):
        asyncio.run(drop())


@pytest.fixture(scope="session")
def redis_url(worker_id_: str) -> str:
    base = _service_url("TEST_REDIS_URL", "redis://127.0.0.1:6379", 6379, "Redis")
    if base is None:
        from referloop.core.embedded import start_embedded_redis

        return start_embedded_redis(Path("var/test"))
    # TEST_REDIS_DB_OFFSET keeps test runs started side by side (each "master") on separate databases.
    index = _worker_index(worker_id_) + int(os.environ.get("TEST_REDIS_DB_OFFSET", "0"))
    return (
        f"{base.rstrip('/').rsplit('/', 1)[0] if base.count('/') > 2 else base.rstrip('/')}/{1 + index % 15}"
    )


@pytest.fixture(scope="session")
def amqp_url() -> str:
    url = _service_url("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/", 5672, "RabbitMQ")
    if url is None:
        pytest.skip("RabbitMQ is not reachable on 127.0.0.1:5672")
    return url


@pytest.fixture(scope="session")
def tmp_var(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("var")


def make_settings(database_url: str, redis_url: str, var_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "env": Environment.test,
        "database_url": database_url,
        "redis_url": redis_url,
        "var_dir": var_dir,
        "jwt_private_keys": [TEST_JWT_PRIVATE_KEY],
        "field_encryption_keys": TEST_FIELD_ENCRYPTION_KEYS,
        # Security-only cost lowered for speed; the same Argon2id code path runs.
        "argon2_time_cost": 1,
        "argon2_memory_cost_kib": 64,
        "argon2_parallelism": 1,
        "trusted_proxy_count": 1,  # tests choose their client IP through X-Forwarded-For
        "db_pool_size": 10,
        "db_read_pool_size": 10,
        "access_log": False,
        "log_level": "WARNING",
    }
    values.update(overrides)
    return Settings.model_validate(values)


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str, tmp_var: Path) -> Settings:
    return make_settings(database_url, redis_url, tmp_var)


@pytest.fixture(scope="session")
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    rt = Runtime.build(settings)
    yield rt
    await rt.close()


@pytest.fixture(scope="session")
def app(runtime: Runtime) -> FastAPI:
    return create_app(runtime.settings, runtime=runtime)


@pytest.fixture
async def app_factory(
    database_url: str, redis_url: str, tmp_var: Path
) -> AsyncIterator[Callable[..., FastAPI]]:
    """Builds another app on the same database and Redis with some settings changed (tiny rate
    limits, no refresh grace, other signing keys). Its runtime is `app.state.runtime`; it is closed
    when the test ends."""
    built: list[Runtime] = []

    def build(**overrides: object) -> FastAPI:
        rt = Runtime.build(make_settings(database_url, redis_url, tmp_var, **overrides))
        built.append(rt)
        return create_app(rt.settings, runtime=rt)

    yield build
    for rt in built:
        await rt.close()


def random_ip() -> str:
    return f"10.{random.randint(0, 255)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client with its own IP address, so rate limits of one test never touch another (nor of
    an earlier run: they live in Redis for their window). The socket peer is random too, for the
    requests whose forwarded address is unusable."""
    transport = httpx.ASGITransport(app=app, client=(random_ip(), 50000))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://test", headers={"X-Forwarded-For": random_ip()}
    ) as c:
        yield c


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
async def smtp_server() -> AsyncIterator[object]:
    """A real SMTP server (aiosmtpd) on a free loopback port; `.port`, `.messages`, `.to(address)`
    and `await .wait_for(address)` (see tests/notifications/support.py)."""
    from tests.notifications.support import start_smtp_server

    inbox, server = await start_smtp_server()
    yield inbox
    server.close()
    await server.wait_closed()


@pytest.fixture
async def broker_ns(amqp_url: str) -> AsyncIterator[object]:
    """A RabbitMQ namespace of this test's own (`.settings(base, consumers)`), deleted at the end."""
    from tests.notifications.support import BrokerNamespace

    ns = BrokerNamespace(amqp_url)
    yield ns
    await ns.cleanup()


@pytest.fixture(scope="session")
def razorpayx_server() -> Iterator[object]:
    """A local RazorpayX on a loopback port, one per worker (tests/fakes/razorpayx_server.py)."""
    from tests.fakes import FakeRazorpayX

    fake = FakeRazorpayX()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_razorpayx(razorpayx_server: object) -> Iterator[object]:
    """The worker's local RazorpayX; faults and account switches a test set are undone after it."""
    from tests.fakes import FakeRazorpayX

    assert isinstance(razorpayx_server, FakeRazorpayX)
    yield razorpayx_server
    razorpayx_server.reset_faults()
    razorpayx_server.balance = 10**12
    razorpayx_server.approval_workflow = False


@pytest.fixture(scope="session")
def stripe_server() -> Iterator[object]:
    """A local Stripe (Connect transfers and payouts) on a loopback port (tests/fakes/stripe_server.py)."""
    from tests.fakes import FakeStripe

    fake = FakeStripe()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_stripe(stripe_server: object) -> Iterator[object]:
    from tests.fakes import FakeStripe

    assert isinstance(stripe_server, FakeStripe)
    yield stripe_server
    stripe_server.reset_faults()
    stripe_server.platform_balance.clear()
