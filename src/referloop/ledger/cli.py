"""`referloop ledger reconcile | expire | balances`."""

from __future__ import annotations

import uuid
from typing import Annotated

import typer

from referloop.ledger.service.reconcile import ReconcileReport
from referloop.runtime import Runtime

ledger_app = typer.Typer(help="The double-entry ledger.", no_args_is_help=True)


@ledger_app.command("reconcile")
def reconcile_command() -> None:
    """Recompute every balance from the postings and check the ledger's invariants; exit 1 and list
    each difference if there is any."""
    from referloop.cli import with_runtime
    from referloop.ledger.service.reconcile import reconcile

    async def run(rt: Runtime) -> ReconcileReport:
        async with rt.db.sessionmaker() as session, session.begin():
            # One snapshot for every check, while postings go on.
            await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            return await reconcile(session)

    report = with_runtime(run)
    for d in report.discrepancies:
        typer.echo(str(d), err=True)
    summary = f"{report.accounts} accounts, {report.entries} entries, {report.postings} postings"
    if not report.ok:
        typer.echo(
            f"ledger does NOT reconcile: {len(report.discrepancies)} difference(s) in {summary}", err=True
        )
        raise typer.Exit(1)
    typer.echo(f"ledger reconciles: {summary}, no difference")


@ledger_app.command("expire")
def expire_command() -> None:
    """Void the pending transfers whose expiry has passed (the worker also does this on a timer)."""
    from referloop.cli import with_runtime
    from referloop.ledger.tasks import expire_pending_transfers

    count = with_runtime(expire_pending_transfers)
    typer.echo(f"expired {count} pending transfer(s)")


@ledger_app.command("balances")
def balances_command(member_id: Annotated[uuid.UUID, typer.Argument(help="The member's id")]) -> None:
    """Print a member's balances per currency."""
    from referloop.cli import with_runtime
    from referloop.ledger.currencies import get_currency
    from referloop.ledger.service.balances import MemberBalance, balances_for

    async def run(rt: Runtime) -> list[MemberBalance]:
        async with rt.db.sessionmaker() as session:
            return await balances_for(session, member_id)

    for b in with_runtime(run):
        c = get_currency(b.currency)
        typer.echo(
            f"{b.currency}  available {c.format(b.available)}  pending {c.format(b.pending)}"
            f"  held {c.format(b.held)}"
        )
