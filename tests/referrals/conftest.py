from __future__ import annotations

import httpx
import pytest

from referloop.runtime import Runtime
from tests.referrals.helpers import Admin, make_admin


@pytest.fixture
async def admin(client: httpx.AsyncClient, runtime: Runtime) -> Admin:
    return await make_admin(client, runtime)
