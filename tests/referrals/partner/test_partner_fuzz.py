"""schemathesis over the partner routes (`/partner/v1/...`) with a real partner key: the repository's
fuzz test calls them with a member's token, which stops at 401; this one reaches the handlers."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from referloop.app import create_app
from referloop.runtime import Runtime
from tests.conftest import make_settings
from tests.factories import asgi_client
from tests.referrals.helpers import make_admin, sql
from tests.referrals.partner.helpers import Partner, make_partner
from tests.test_openapi_fuzz import problem_json_errors


def _spec_app() -> FastAPI:
    with tempfile.TemporaryDirectory() as var:
        return create_app(
            make_settings("postgresql://spec@127.0.0.1:9/spec", "redis://127.0.0.1:9/0", Path(var))
        )


schema = schemathesis.openapi.from_asgi("/openapi.json", _spec_app()).include(path_regex="^/partner/")


@pytest.fixture(scope="module")
def partner_app(database_url: str, redis_url: str, tmp_var: Path) -> Iterator[FastAPI]:
    app = create_app(make_settings(database_url, redis_url, tmp_var, rate_limit_enabled=False))
    yield app
    asgi.shutdown_lifespans()


@pytest.fixture(scope="module")
def partner_key(database_url: str, redis_url: str, tmp_var: Path) -> Iterator[str]:
    settings = make_settings(database_url, redis_url, tmp_var, rate_limit_enabled=False)

    async def make() -> Partner:
        rt = Runtime.build(settings)
        try:
            async with asgi_client(create_app(rt.settings, runtime=rt)) as client:
                return await make_partner(client, await make_admin(client, rt))
        finally:
            await rt.close()

    async def retire_endpoints(university_id: str) -> None:
        # Fuzzed endpoints point anywhere: no later sender in this database may ever call them.
        rt = Runtime.build(settings)
        try:
            await sql(
                rt,
                "UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL "
                "WHERE status = 'pending' AND endpoint_id IN "
                "(SELECT id FROM webhook_endpoints WHERE university_id = :u)",
                u=uuid.UUID(university_id),
            )
            await sql(
                rt,
                "UPDATE webhook_endpoints SET deleted_at = now() WHERE university_id = :u",
                u=uuid.UUID(university_id),
            )
        finally:
            await rt.close()

    partner = asyncio.run(make())
    yield partner.key
    asyncio.run(retire_endpoints(partner.university_id))


@schema.parametrize()
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_partner_api_keeps_its_contract(case: Case, partner_app: FastAPI, partner_key: str) -> None:
    case.call_and_validate(
        app=partner_app,
        headers={"Authorization": f"Bearer {partner_key}"},
        additional_checks=[problem_json_errors],
        excluded_checks=[positive_data_acceptance, negative_data_rejection],
    )
