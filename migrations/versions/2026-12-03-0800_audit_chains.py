"""audit log as AUDIT_CHAINS hash chains: a `chain` column, primary key (chain, seq), and the
function that picks a free chain and reads its head in one round trip

Revision ID: 0013_audit_chains
Revises: 0012_partner_webhooks
Create Date: 2026-12-03 08:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_audit_chains"
down_revision: str | Sequence[str] | None = "0012_partner_webhooks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Fail fast instead of queueing behind a long lock on a busy table.
    op.execute("SET LOCAL lock_timeout = '5s'")
    # Existing rows become chain 0 with their seq. A constant default is stored in the catalogue, not
    # written into each row, so no UPDATE runs (the append-only trigger stays on) and dropping the
    # default afterwards leaves them at 0.
    op.add_column("audit_log", sa.Column("chain", sa.SmallInteger(), server_default="0", nullable=False))
    op.alter_column("audit_log", "chain", server_default=None)
    op.drop_constraint("pk_audit_log", "audit_log", type_="primary")
    op.create_primary_key("pk_audit_log", "audit_log", ["chain", "seq"])
    # Try the chains in the caller's (random) order and take the first free one; if all are busy,
    # wait for the first. Then read that chain's last row: a VOLATILE function takes a new snapshot
    # per statement, so this read sees what the lock's previous holder committed.
    op.execute("""
        CREATE FUNCTION audit_chain_head(
            chains smallint[], lock_base bigint,
            OUT picked_chain smallint, OUT last_seq bigint, OUT last_hash bytea
        ) LANGUAGE plpgsql VOLATILE AS $$
        DECLARE
            c smallint;
        BEGIN
            FOREACH c IN ARRAY chains LOOP
                IF pg_try_advisory_xact_lock(lock_base + c) THEN
                    picked_chain := c;
                    EXIT;
                END IF;
            END LOOP;
            IF picked_chain IS NULL THEN
                picked_chain := chains[1];
                PERFORM pg_advisory_xact_lock(lock_base + picked_chain);
            END IF;
            SELECT a.seq, a.row_hash INTO last_seq, last_hash
            FROM audit_log a WHERE a.chain = picked_chain ORDER BY a.seq DESC LIMIT 1;
        END $$;
    """)


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    # One chain cannot be rebuilt from several without rewriting hashes (the log is append-only).
    op.execute("""
        DO $$ BEGIN
            IF EXISTS (SELECT 1 FROM audit_log WHERE chain <> 0) THEN
                RAISE EXCEPTION 'audit_log has rows in chains other than 0: cannot go back to one chain';
            END IF;
        END $$;
    """)
    op.execute("DROP FUNCTION IF EXISTS audit_chain_head(smallint[], bigint)")
    op.drop_constraint("pk_audit_log", "audit_log", type_="primary")
    op.create_primary_key("pk_audit_log", "audit_log", ["seq"])
    op.drop_column("audit_log", "chain")
