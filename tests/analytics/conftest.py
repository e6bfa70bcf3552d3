from __future__ import annotations

import httpx
import pytest

from referloop.identity.models import Role
from referloop.runtime import Runtime
from tests.factories import Staff, create_staff
from tests.referrals.helpers import Admin, make_admin


@pytest.fixture
async def admin(client: httpx.AsyncClient, runtime: Runtime) -> Admin:
    return await make_admin(client, runtime)


@pytest.fixture
async def support(client: httpx.AsyncClient, runtime: Runtime) -> Staff:
    return await create_staff(client, runtime, role=Role.support)
