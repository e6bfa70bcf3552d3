from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from referloop.runtime import Runtime
from tests.referrals.helpers import Admin, create_university, make_admin, sql
from tests.webhooks.support import Receiver


@pytest.fixture
async def admin(client: httpx.AsyncClient, runtime: Runtime) -> Admin:
    return await make_admin(client, runtime)


@pytest.fixture
async def university(client: httpx.AsyncClient, admin: Admin) -> dict[str, Any]:
    return await create_university(client, admin)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.stop()


@pytest.fixture(autouse=True)
async def _only_this_tests_endpoints(runtime: Runtime) -> AsyncIterator[None]:
    """Each test's sender must only meet the endpoints that test made: endpoints left by earlier tests
    in this database (a fuzzer's random URLs included) are deleted first, their pending deliveries
    given up. xdist runs one test at a time per database, so no running test loses its endpoints."""

    async def retire() -> None:
        await sql(
            runtime,
            "UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL WHERE status = 'pending'",
        )
        await sql(runtime, "UPDATE webhook_endpoints SET deleted_at = now() WHERE deleted_at IS NULL")

    await retire()
    yield
    await retire()
