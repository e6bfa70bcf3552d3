"""withdrawals and payout webhook inbox

Revision ID: 0007_withdrawals
Revises: 0002_ledger, 0003_referrals, 0006_disputes (merges the heads)
Create Date: 2026-11-25 03:33:17.137041+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007_withdrawals"
# Also the merge point of the heads that existed when it was written.
down_revision: str | Sequence[str] | None = ("0002_ledger", "0003_referrals", "0006_disputes")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Fail fast instead of queueing behind a long lock on a busy table.
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.create_table(
        "payout_webhook_inbox",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("external_id", sa.String(length=120), nullable=False),
        sa.Column("event_type", sa.String(length=80), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("withdrawal_id", sa.UUID(), nullable=True),
        sa.Column("outcome", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payout_webhook_inbox")),
    )
    op.create_index(
        "ix_payout_webhook_inbox_unprocessed",
        "payout_webhook_inbox",
        ["received_at"],
        unique=False,
        postgresql_where=sa.text("processed_at IS NULL"),
    )
    op.create_index(
        "uq_payout_webhook_inbox_source_external_id",
        "payout_webhook_inbox",
        ["source", "external_id"],
        unique=True,
    )
    op.create_table(
        "withdrawals",
        sa.Column("member_id", sa.UUID(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("fee", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("payout_method_id", sa.UUID(), nullable=False),
        sa.Column("method_kind", sa.String(length=20), nullable=False),
        sa.Column("method_masked", sa.String(length=60), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("provider", sa.String(length=20), nullable=False),
        sa.Column("attempt", sa.SmallInteger(), server_default="1", nullable=False),
        sa.Column("hold_transfer_id", sa.UUID(), nullable=False),
        sa.Column("provider_payout_id", sa.String(length=120), nullable=True),
        sa.Column("provider_status", sa.String(length=20), nullable=True),
        sa.Column("provider_raw_status", sa.String(length=40), nullable=True),
        sa.Column("provider_fee", sa.BigInteger(), nullable=True),
        sa.Column("bank_reference", sa.String(length=64), nullable=True),
        sa.Column("failure_code", sa.String(length=64), nullable=True),
        sa.Column("failure_message", sa.String(length=500), nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("approved_by", sa.UUID(), nullable=True),
        sa.Column("approved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("processing_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("paid_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rejected_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reversed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("currency ~ '^[A-Z]{3}$'", name=op.f("ck_withdrawals_currency_format")),
        sa.CheckConstraint(
            "state IN ('requested','approved','processing','paid','failed','cancelled','rejected','reversed')",
            name=op.f("ck_withdrawals_state_known"),
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_withdrawals_amount_positive")),
        sa.CheckConstraint("attempt >= 1", name=op.f("ck_withdrawals_attempt_positive")),
        sa.CheckConstraint("fee >= 0 AND fee < amount", name=op.f("ck_withdrawals_fee_below_amount")),
        sa.ForeignKeyConstraint(["member_id"], ["users.id"], name=op.f("fk_withdrawals_member_id_users")),
        sa.ForeignKeyConstraint(
            ["payout_method_id"],
            ["payout_methods.id"],
            name=op.f("fk_withdrawals_payout_method_id_payout_methods"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_withdrawals")),
    )
    op.create_index("ix_withdrawals_member_created", "withdrawals", ["member_id", "created_at"], unique=False)
    op.create_index("ix_withdrawals_member_id", "withdrawals", ["member_id", "id"], unique=False)
    op.create_index(
        "ix_withdrawals_processing",
        "withdrawals",
        ["processing_at"],
        unique=False,
        postgresql_where=sa.text("state = 'processing'"),
    )
    op.create_index("ix_withdrawals_state", "withdrawals", ["state", "id"], unique=False)
    op.create_index(
        "uq_withdrawals_provider_payout",
        "withdrawals",
        ["provider", "provider_payout_id"],
        unique=True,
        postgresql_where=sa.text("provider_payout_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "uq_withdrawals_provider_payout",
        table_name="withdrawals",
        postgresql_where=sa.text("provider_payout_id IS NOT NULL"),
    )
    op.drop_index("ix_withdrawals_state", table_name="withdrawals")
    op.drop_index(
        "ix_withdrawals_processing",
        table_name="withdrawals",
        postgresql_where=sa.text("state = 'processing'"),
    )
    op.drop_index("ix_withdrawals_member_id", table_name="withdrawals")
    op.drop_index("ix_withdrawals_member_created", table_name="withdrawals")
    op.drop_table("withdrawals")
    op.drop_index("uq_payout_webhook_inbox_source_external_id", table_name="payout_webhook_inbox")
    op.drop_index(
        "ix_payout_webhook_inbox_unprocessed",
        table_name="payout_webhook_inbox",
        postgresql_where=sa.text("processed_at IS NULL"),
    )
    op.drop_table("payout_webhook_inbox")
