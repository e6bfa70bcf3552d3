"""`referloop` command: serve, worker, migrate, create-staff, seed-demo, audit, outbox ..."""

from __future__ import annotations

import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from referloop.config import Settings, get_settings
from referloop.identity.models import Role
from referloop.runtime import Runtime, resolve_service_urls

app = typer.Typer(
    help="Referloop: referral-and-rewards backend.", no_args_is_help=True, pretty_exceptions_enable=False
)
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")

from referloop.payouts.methods.cli import keys_app  # noqa: E402

app.add_typer(keys_app, name="keys")

from referloop.ledger.cli import ledger_app  # noqa: E402

app.add_typer(ledger_app, name="ledger")

from referloop.payouts.withdrawals.cli import payouts_app  # noqa: E402

app.add_typer(payouts_app, name="payouts")

from referloop.referrals.rewards.cli import rewards_app  # noqa: E402

app.add_typer(rewards_app, name="rewards")

from referloop.core.outbox.cli import outbox_app  # noqa: E402
from referloop.worker import worker_command  # noqa: E402

app.add_typer(outbox_app, name="outbox")
app.command("worker")(worker_command)

T = TypeVar("T")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _settings() -> Settings:
    """Settings with embedded services started where no URL is configured (development)."""
    return resolve_service_urls(get_settings())


def with_runtime(fn: Callable[[Runtime], Awaitable[T]]) -> T:
    async def run() -> T:
        rt = Runtime.build(_settings())
        try:
            return await fn(rt)
        finally:
            await rt.close()

    return asyncio.run(run())


def run_migrations(database_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    command.upgrade(cfg, "heads")


@app.command()
def migrate() -> None:
    """Apply every database migration."""
    settings = _settings()
    run_migrations(settings.database_url)
    typer.echo("database is up to date")


@app.command()
def serve(
    workers: Annotated[int, typer.Option(min=1, max=64, help="API worker processes")] = 1,
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
) -> None:
    """Start the HTTP API."""
    import os

    import uvicorn

    settings = _settings()
    # Embedded services were started by this process: hand their URLs to the workers.
    os.environ["REFERLOOP_DATABASE_URL"] = settings.database_url
    os.environ["REFERLOOP_REDIS_URL"] = settings.redis_url
    typer.echo(f"Referloop API on http://{host}:{port}  (docs: http://{host}:{port}/docs)")
    uvicorn.run(
        "referloop.asgi:app",
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        proxy_headers=False,
    )


@app.command()
def run(
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
) -> None:
    """Development all-in-one: start embedded services where no URL is set, migrate, then run the
    worker in a child process and the API in this one."""
    import os
    import subprocess

    settings = _settings()
    os.environ["REFERLOOP_DATABASE_URL"] = settings.database_url
    os.environ["REFERLOOP_REDIS_URL"] = settings.redis_url
    run_migrations(settings.database_url)
    worker = subprocess.Popen([sys.executable, "-m", "referloop", "worker"])
    try:
        serve(workers=1, port=port, host=host)
    finally:
        worker.terminate()
        worker.wait(timeout=30)


@app.command("create-staff")
def create_staff(
    email: Annotated[str, typer.Option(help="Staff member's email")],
    role: Annotated[Role, typer.Option(help="support, finance or admin")] = Role.admin,
    display_name: Annotated[str, typer.Option()] = "Staff",
    password: Annotated[str | None, typer.Option(help="Prompted for when omitted")] = None,
) -> None:
    """Create a staff account (the first admin, typically). They enrol TOTP at first sign-in."""
    if role is Role.member:
        raise typer.BadParameter("use a staff role: support, finance or admin")
    secret = password or getpass.getpass("Password: ")

    async def run(rt: Runtime) -> str:
        from referloop.compliance import audit
        from referloop.core.validation import normalize_email
        from referloop.identity.service.accounts import create_user

        async with rt.db.sessionmaker() as session, session.begin():
            user = await create_user(
                session,
                rt,
                email=normalize_email(email),
                phone=None,
                password=secret,
                display_name=display_name,
                role=role,
            )
            await audit.record(
                session,
                action="staff.created",
                actor_id=None,
                actor_type="system",
                target_type="user",
                target_id=user.id,
                after={"role": role.value},
            )
            return str(user.id)

    try:
        user_id = with_runtime(run)
    except Exception as exc:
        typer.echo(f"error: {getattr(exc, 'detail', exc)}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(
        f"created {role.value} {user_id}; sign in, then enrol TOTP at POST /v1/auth/totp/enroll (with your password)"
    )


@app.command("seed-demo")
def seed_demo() -> None:
    """Fill the database with demo members, staff and (as domains land) their data. Idempotent."""
    from referloop.demo import DemoRefused
    from referloop.demo import seed_demo as run_seed

    try:
        lines = with_runtime(run_seed)
    except DemoRefused as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    for line in lines:
        typer.echo(line)


@app.command("settings-doc")
def settings_doc(
    write: Annotated[bool, typer.Option("--write", help="Rewrite the table in README.md in place")] = False,
) -> None:
    """Print the settings table of the README (generated from the Settings model)."""
    from referloop.settings_doc import replace_in, settings_table

    if write:
        readme = PROJECT_ROOT / "README.md"
        readme.write_text(replace_in(readme.read_text()))
        typer.echo(f"updated {readme}")
    else:
        typer.echo(settings_table())


@audit_app.command("verify")
def audit_verify(
    anchor: Annotated[
        Path | None,
        typer.Option(
            help="A file of anchors (`audit anchor` lines): also check that each anchored row is still there",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
) -> None:
    """Recompute every audit chain; exit 1 and list every changed or missing row (chain and seq).
    With --anchor, a chain cut back or rewritten after an anchor is found too."""
    from referloop.compliance.audit import ChainHead, check_anchors, parse_anchors, verify_chain

    heads: list[ChainHead] = []
    if anchor is not None:
        try:
            heads = parse_anchors(anchor.read_text())
        except ValueError as exc:
            typer.echo(f"{anchor}: {exc}", err=True)
            raise typer.Exit(2) from exc

    async def run(rt: Runtime) -> tuple[int, list[Any]]:
        async with rt.db.sessionmaker() as session:
            count, problems = await verify_chain(session)
            return count, problems + await check_anchors(session, heads)

    count, problems = with_runtime(run)
    for p in problems:
        typer.echo(f"chain {p.chain} seq {p.seq}: {p.problem}", err=True)
    if problems:
        typer.echo(f"audit chain BROKEN: {len(problems)} problem(s) in {count} rows", err=True)
        raise typer.Exit(1)
    anchored = f", {len(heads)} anchored row(s) in place" if anchor is not None else ""
    typer.echo(f"audit chain intact: {count} rows{anchored}")


@audit_app.command("anchor")
def audit_anchor(
    output: Annotated[
        Path | None, typer.Option(help="Also append the line to this file", dir_okay=False)
    ] = None,
) -> None:
    """Print the head of every audit chain as one JSON line, to keep outside the database (a log
    shipper, locked object storage): `audit verify --anchor` then finds a chain cut back behind it."""
    from referloop.compliance.audit import anchor_line, chain_heads
    from referloop.core.db import utcnow

    async def run(rt: Runtime) -> str:
        async with rt.db.sessionmaker() as session:
            return anchor_line(await chain_heads(session), utcnow())

    line = with_runtime(run)
    if output is not None:
        with output.open("a") as f:
            f.write(line + "\n")
    typer.echo(line)


def main() -> None:
    from pydantic import ValidationError

    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except ValidationError as exc:
        # Settings refused (a missing or placeholder secret outside development): say which, no traceback.
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"])
            typer.echo(
                f"referloop: settings refused: {f'{where}: ' if where else ''}{error['msg']}", err=True
            )
        sys.exit(2)
