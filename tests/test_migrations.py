"""The migrations and the models agree, and the migrations go down to nothing and up again."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Connection, pool
from sqlalchemy.ext.asyncio import create_async_engine

from referloop.cli import PROJECT_ROOT
from referloop.core.db import to_asyncpg_url
from referloop.models import Base, include_in_autogenerate


def alembic_config(database_url: str) -> Config:
    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def schema_diffs(database_url: str) -> list[Any]:
    """What `alembic revision --autogenerate` would write, with the options migrations/env.py uses."""

    def compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_object": include_in_autogenerate}
        )
        return list(compare_metadata(context, Base.metadata))

    async def run() -> list[Any]:
        engine = create_async_engine(to_asyncpg_url(database_url), poolclass=pool.NullPool)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(compare)
        finally:
            await engine.dispose()

    return asyncio.run(run())


async def _fetch(database_url: str, sql: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        return [r[0] for r in await conn.fetch(sql)]
    finally:
        await conn.close()


def leftovers(database_url: str) -> dict[str, list[str]]:
    """Everything of ours in the public schema: tables, views, sequences, types, functions.
    Extensions (pg_trgm) may stay: other databases' objects can depend on them."""
    queries = {
        "relations": "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S') ORDER BY 1",
        "types": "SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace"
        " WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd', 'c')"
        " AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.reltype = t.oid)"
        " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = t.oid AND d.deptype = 'e') ORDER BY 1",
        "functions": "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'public' AND NOT EXISTS (SELECT 1 FROM pg_depend d"
        "   WHERE d.objid = p.oid AND d.deptype = 'e') ORDER BY 1",
    }

    async def run() -> dict[str, list[str]]:
        return {name: await _fetch(database_url, sql) for name, sql in queries.items()}

    return asyncio.run(run())


@pytest.fixture
def scratch_database(database_url: str) -> Iterator[str]:
    """An empty database of its own, dropped afterwards."""
    parts = urlsplit(database_url)
    admin = parts._replace(path="/postgres").geturl()
    name = f"referloop_migrations_{os.getpid()}_{uuid.uuid4().hex[:8]}"

    async def execute(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(execute(f'CREATE DATABASE "{name}"'))
    yield parts._replace(path=f"/{name}").geturl()
    asyncio.run(execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_models_and_migrations_agree(database_url: str) -> None:
    # The test database was built by `alembic upgrade heads` (conftest).
    diffs = schema_diffs(database_url)
    assert diffs == [], "models differ from the migrations; generate a revision:\n" + "\n".join(
        map(str, diffs)
    )


def test_migrations_go_down_to_nothing_and_up_again(scratch_database: str) -> None:
    cfg = alembic_config(scratch_database)
    command.upgrade(cfg, "heads")
    assert schema_diffs(scratch_database) == []
    tables = leftovers(scratch_database)["relations"]
    assert {"users", "audit_log", "outbox_events"} <= set(tables)

    command.downgrade(cfg, "base")
    assert leftovers(scratch_database) == {"relations": ["alembic_version"], "types": [], "functions": []}

    command.upgrade(cfg, "heads")
    assert schema_diffs(scratch_database) == []
    assert leftovers(scratch_database)["relations"] == tables


def test_runtime_partitions_are_not_schema_drift(database_url: str) -> None:
    async def make_partition() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS clicks_y2031m01 PARTITION OF clicks"
                " FOR VALUES FROM ('2031-01-01') TO ('2031-02-01')"
            )
        finally:
            await conn.close()

    asyncio.run(make_partition())
    assert schema_diffs(database_url) == []
