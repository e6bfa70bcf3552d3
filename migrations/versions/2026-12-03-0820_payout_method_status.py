"""payout method status: Stripe Connect accounts wait for onboarding before they can be paid

Revision ID: 0015_payout_method_status
Revises: 0014_member_level
Create Date: 2026-12-03 08:20:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015_payout_method_status"
down_revision: str | Sequence[str] | None = "0014_member_level"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Fail fast instead of queueing behind a long lock on a busy table.
    op.execute("SET LOCAL lock_timeout = '5s'")
    # A constant default: PostgreSQL >= 11 adds it without rewriting the table; every method that
    # exists now is a bank account, UPI id or PayPal email, which is active when added.
    op.add_column(
        "payout_methods",
        sa.Column("status", sa.String(length=20), server_default="active", nullable=False),
    )
    op.add_column(
        "payout_methods", sa.Column("status_reported_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    # Without the column, a connected account Stripe cannot pay yet would look payable: keep it
    # out of reach until onboarding is built again.
    op.execute("UPDATE payout_methods SET usable_from = '9999-01-01' WHERE status <> 'active'")
    op.drop_column("payout_methods", "status_reported_at")
    op.drop_column("payout_methods", "status")
