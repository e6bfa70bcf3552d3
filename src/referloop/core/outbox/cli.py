"""`referloop outbox status | retry-dead`."""

from __future__ import annotations

from typing import Annotated

import orjson
import typer

from referloop.runtime import Runtime

outbox_app = typer.Typer(
    help="The transactional outbox and the consumers' dead letters.", no_args_is_help=True
)


@outbox_app.command("status")
def status(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of lines")] = False,
) -> None:
    """Backlog (events not yet published), age of the oldest, dead events and dead letters."""
    from referloop.cli import with_runtime
    from referloop.core.outbox.stats import OutboxStats, outbox_stats

    async def run(rt: Runtime) -> OutboxStats:
        async with rt.db.sessionmaker() as session:
            return await outbox_stats(session)

    stats = with_runtime(run)
    values = {
        "backlog": stats.backlog,
        "oldest_age_seconds": round(stats.oldest_age_seconds, 3),
        "dead_events": stats.dead_events,
        "dead_letters": stats.dead_letters,
    }
    if as_json:
        typer.echo(orjson.dumps(values).decode())
    else:
        for key, value in values.items():
            typer.echo(f"{key}: {value}")


@outbox_app.command("retry-dead")
def retry_dead_command() -> None:
    """Give dead outbox events fresh tries and hand dead letters back to their consumers."""
    from referloop.cli import with_runtime
    from referloop.core.outbox.dead import RetryDeadResult, retry_dead
    from referloop.worker import load_task_modules

    async def run(rt: Runtime) -> RetryDeadResult:
        return await retry_dead(rt, load_task_modules())

    result = with_runtime(run)
    typer.echo(f"dead events made pending: {result.events}")
    typer.echo(f"dead letters handed back: {result.letters}")
    if result.failed:
        typer.echo(f"dead letters that failed again: {result.failed}", err=True)
        raise typer.Exit(1)
