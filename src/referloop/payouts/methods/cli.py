"""`referloop keys rotate`: re-encrypt stored personal fields, and recompute blind indexes, under the
first configured key."""

from __future__ import annotations

import typer

keys_app = typer.Typer(help="Field-encryption keys.", no_args_is_help=True)


@keys_app.command("rotate")
def rotate() -> None:
    """Put the new key first in REFERLOOP_FIELD_ENCRYPTION_KEYS (keep the old one after it) and
    restart the app, run this, then remove the old key once it exits 0 (nothing left under another
    key). It exits 1 while anything is left: rows written meanwhile by a process still on the old
    settings (run it again), or payout methods added twice while the key changed (named: staff
    remove one of each pair, then run it again). Safe to run again at any time."""
    from referloop.cli import with_runtime
    from referloop.core.security.rotation import RotationResult
    from referloop.identity.service.totp import rotate_totp_secrets
    from referloop.payouts.methods.service import rotate_keys
    from referloop.referrals.lifecycle.service.leads import rotate_lead_keys
    from referloop.runtime import Runtime
    from referloop.webhooks.service.endpoints import rotate_secret_keys

    async def run(rt: Runtime) -> list[RotationResult]:
        # A transaction per batch in each: no long-held locks; an interrupted run is simply rerun.
        return [
            await rotate_keys(rt),
            await rotate_totp_secrets(rt),
            await rotate_lead_keys(rt),
            await rotate_secret_keys(rt),
        ]

    results = with_runtime(run)
    for result in results:
        for line in result.lines():
            typer.echo(line)
    left = sum(r.remaining for r in results)
    if left or any(r.conflicts for r in results):
        typer.echo(
            f"error: {left} value(s) still under another key: keep the old key configured and run "
            "this again (after staff resolve the rows named above, if any)",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo("every value is under the primary key: the old key can be removed")
