"""`referloop rewards run`: the worker's reward and expiry jobs, once, by hand."""

from __future__ import annotations

import typer

from referloop.referrals.rewards.service.jobs import JobReport
from referloop.runtime import Runtime

rewards_app = typer.Typer(help="Referral rewards.", no_args_is_help=True)


@rewards_app.command("run")
def run_command() -> None:
    """Expire invitations past their window, take back cancelled enrolments' rewards, grant queued
    rewards and release those past their hold, until nothing is left (the worker does this on a timer)."""
    from referloop.cli import with_runtime
    from referloop.referrals.lifecycle.service.expiry import expire_due
    from referloop.referrals.rewards.service.jobs import run_until_idle

    async def run(rt: Runtime) -> tuple[int, JobReport]:
        expired = 0
        while batch := await expire_due(rt):
            expired += batch
        return expired, await run_until_idle(rt)

    expired, report = with_runtime(run)
    typer.echo(
        f"expired {expired} invitation(s); rewards: {report.granted} granted, {report.skipped} skipped,"
        f" {report.released} released, {report.reversed} reversed, {report.failed} failed"
    )
    if report.failed:
        raise typer.Exit(1)
