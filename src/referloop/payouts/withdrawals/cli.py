"""`referloop payouts sync`: settle withdrawals stuck in processing by asking their provider."""

from __future__ import annotations

from typing import Annotated

import typer

payouts_app = typer.Typer(help="Withdrawals and payout providers.", no_args_is_help=True)


@payouts_app.command("sync")
def sync_command(
    older_than: Annotated[
        int | None,
        typer.Option(
            min=0, help="Seconds in processing before asking (default: REFERLOOP_PAYOUT_SYNC_AFTER_SECONDS)"
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 1000,
) -> None:
    """Ask the provider for the state of every payout processing for longer than the configured time,
    and apply it (paid, failed, returned); one never received by the provider is sent again under
    the same idempotency key. Exit 1 if the provider could not be asked about some."""
    from referloop.cli import with_runtime
    from referloop.payouts.withdrawals.service.sync import SyncReport, sync_stuck
    from referloop.runtime import Runtime

    async def run(rt: Runtime) -> SyncReport:
        return await sync_stuck(rt, older_than_seconds=older_than, limit=limit)

    report = with_runtime(run)
    for withdrawal_id, outcome in report.outcomes.items():
        typer.echo(f"{withdrawal_id}: {outcome}")
    for withdrawal_id, error in report.errors.items():
        typer.echo(f"{withdrawal_id}: ERROR {error}", err=True)
    typer.echo(f"checked {report.checked} withdrawal(s), {len(report.errors)} error(s)")
    if report.errors:
        raise typer.Exit(1)
