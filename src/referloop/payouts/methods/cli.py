"""`referloop keys rotate`: re-encrypt stored personal fields under the first configured key."""

from __future__ import annotations

import typer

keys_app = typer.Typer(help="Field-encryption keys.", no_args_is_help=True)


@keys_app.command("rotate")
def rotate() -> None:
    """Put the new key first in REFERLOOP_FIELD_ENCRYPTION_KEYS (keep the old one after it), run this,
    then remove the old key once it reports nothing left to re-encrypt."""
    from referloop.cli import with_runtime
    from referloop.identity.service.totp import rotate_totp_secrets
    from referloop.payouts.methods.service import rotate_keys
    from referloop.runtime import Runtime

    async def run(rt: Runtime) -> tuple[int, int]:
        async with rt.db.sessionmaker() as session, session.begin():
            return await rotate_keys(session, rt), await rotate_totp_secrets(session, rt)

    methods, secrets = with_runtime(run)
    typer.echo(f"re-encrypted {methods} payout method(s) and {secrets} TOTP secret(s) under the primary key")
