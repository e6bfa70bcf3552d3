from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from referloop.core.db import utcnow
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
async def _retire_endpoints(runtime: Runtime) -> AsyncIterator[None]:
    """Endpoints made by a test are deleted after it (their pending deliveries given up), so a later
    test's sender never spends its batch on a receiver that is gone."""
    started = utcnow()
    yield
    await sql(
        runtime,
        "UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL WHERE status = 'pending' "
        "AND endpoint_id IN (SELECT id FROM webhook_endpoints WHERE created_at >= :t)",
        t=started,
    )
    await sql(runtime, "UPDATE webhook_endpoints SET deleted_at = now() WHERE created_at >= :t", t=started)
