"""outbox dead index

Revision ID: 0005_outbox_dead
Revises: 0004_payout_methods
Create Date: 2026-11-25 03:30:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_outbox_dead"
down_revision: str | Sequence[str] | None = "0004_payout_methods"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Fail fast instead of queueing behind a long lock on a busy table.
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.create_index(
        "ix_outbox_events_dead",
        "outbox_events",
        ["dead_at"],
        unique=False,
        postgresql_where=sa.text("dead_at IS NOT NULL AND published_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_outbox_events_dead",
        table_name="outbox_events",
        postgresql_where=sa.text("dead_at IS NOT NULL AND published_at IS NULL"),
    )
