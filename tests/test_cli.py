"""`referloop --help`, and `--help` on every command and sub-command, answers with its usage."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import secrets
import subprocess
import sys
import uuid
from typing import Any

import pytest
import typer.main
from pydantic import SecretStr
from sqlalchemy import update
from typer.testing import CliRunner

from referloop.cli import app
from referloop.config import Settings
from referloop.core.db import utcnow
from referloop.core.ids import uuid7
from referloop.core.security.fields import FieldCipher
from referloop.identity.models import User
from referloop.payouts.methods.models import PayoutMethod
from referloop.payouts.methods.service import STRIPE_KIND, _store
from referloop.runtime import Runtime

# Wide and plain, so that option names are never wrapped or coloured apart.
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})


def command_paths(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group below `command` (a click command; Typer vendors its own click), as
    the words that reach it."""
    paths = [path]
    for name, sub in sorted((getattr(command, "commands", None) or {}).items()):
        paths += command_paths(sub, (*path, name))
    return paths


ALL_COMMANDS = command_paths(typer.main.get_command(app))


def test_the_tree_holds_the_commands_the_readme_names() -> None:
    names = {" ".join(p) for p in ALL_COMMANDS}
    for expected in (
        "serve",
        "worker",
        "migrate",
        "create-staff",
        "seed-demo",
        "outbox status",
        "audit verify",
    ):
        assert expected in names, sorted(names)


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "referloop")
def test_help_exits_0_with_usage(path: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*path, "--help"], prog_name="referloop")
    assert result.exit_code == 0, result.output
    assert f"Usage: {' '.join(('referloop', *path))} " in " ".join(result.output.split())


def test_serve_takes_workers_and_port() -> None:
    result = runner.invoke(app, ["serve", "--help"], prog_name="referloop")
    assert result.exit_code == 0, result.output
    assert "--workers" in result.output and "--port" in result.output


def test_the_installed_command_answers_help() -> None:
    """The real entry point, in a process of its own (imports, console script wiring)."""
    result = subprocess.run(
        [sys.executable, "-m", "referloop", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"COLUMNS": "200", "NO_COLOR": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and "serve" in result.stdout


def test_keys_rotate_reports_what_is_left_and_exits_1_until_nothing_is(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`keys rotate` over every table; an account added twice while the key changed is named, left
    for staff, and the command exits 1 until it is resolved; then 0 (the old key can go)."""
    current = settings.field_encryption_keys.get_secret_value()
    new = f"rot{uuid.uuid4().hex[:6]}:{base64.urlsafe_b64encode(os.urandom(32)).decode()}"
    member = uuid7()

    def method(rt: Runtime, account: str) -> PayoutMethod:
        made = PayoutMethod(id=uuid7(), member_id=member, label="x", status="active")
        _store(
            rt,
            made,
            STRIPE_KIND,
            {"kind": STRIPE_KIND, "account_id": account},
            "acct",
            f"{STRIPE_KIND}:{account}",
        )
        return made

    async def seed() -> tuple[uuid.UUID, uuid.UUID]:
        rt = Runtime.build(settings)
        rotated = dataclasses.replace(rt, cipher=FieldCipher.from_setting(f"{new},{current}"))
        try:
            async with rt.db.sessionmaker() as s, s.begin():
                s.add(
                    User(
                        id=member,
                        email=f"{member.hex}@example.com",
                        password_hash="!",
                        display_name="C",
                        referral_code=secrets.token_hex(4).upper(),
                    )
                )
                await s.flush()
                old, twin = method(rt, "acct_cli"), method(rotated, "acct_cli")
                s.add_all([old, twin])
            return old.id, twin.id
        finally:
            await rt.close()

    async def remove(method_id: uuid.UUID) -> None:
        rt = Runtime.build(settings)
        try:
            async with rt.db.sessionmaker() as s, s.begin():
                await s.execute(
                    update(PayoutMethod).where(PayoutMethod.id == method_id).values(deleted_at=utcnow())
                )
        finally:
            await rt.close()

    def rotate(keys: str) -> Any:
        monkeypatch.setattr(
            "referloop.cli._settings",
            lambda: settings.model_copy(update={"field_encryption_keys": SecretStr(keys)}),
        )
        return runner.invoke(app, ["keys", "rotate"], prog_name="referloop")

    old, twin = asyncio.run(seed())
    try:
        result = rotate(f"{new},{current}")
        assert result.exit_code == 1, result.output
        assert f"payout method {old} of member {member}" in result.output and str(twin) in result.output
        assert (
            "payout_methods: re-encrypted" in result.output and "still under another key 1" in result.output
        )
        asyncio.run(remove(twin))
        result = rotate(f"{new},{current}")
        assert result.exit_code == 0, result.output
        assert "the old key can be removed" in result.output
    finally:
        asyncio.run(remove(twin))
        result = rotate(f"{current},{new}")
        assert result.exit_code == 0, result.output
