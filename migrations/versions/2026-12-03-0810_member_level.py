"""member level on users (default 1, set by admins until the engagement issue computes it) and the
campaigns' minimum member level for eligibility

Revision ID: 0014_member_level
Revises: 0013_audit_chains
Create Date: 2026-12-03 08:10:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014_member_level"
down_revision: str | Sequence[str] | None = "0013_audit_chains"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Fail fast instead of queueing behind a long lock on a busy table.
    op.execute("SET LOCAL lock_timeout = '5s'")
    # A constant default is stored in the catalogue: no table rewrite, existing members are level 1.
    op.add_column("users", sa.Column("level", sa.SmallInteger(), server_default="1", nullable=False))
    op.add_column("campaigns", sa.Column("min_member_level", sa.SmallInteger(), nullable=True))
    # Added NOT VALID (no scan under the exclusive lock), then validated under a weaker lock.
    op.execute(
        "ALTER TABLE users ADD CONSTRAINT ck_users_level_bounded CHECK (level BETWEEN 1 AND 1000) NOT VALID"
    )
    op.execute("ALTER TABLE users VALIDATE CONSTRAINT ck_users_level_bounded")
    op.create_check_constraint(
        op.f("ck_campaigns_min_member_level_bounded"),
        "campaigns",
        "min_member_level IS NULL OR min_member_level BETWEEN 1 AND 1000",
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_campaigns_min_member_level_bounded"), "campaigns", type_="check")
    op.drop_constraint(op.f("ck_users_level_bounded"), "users", type_="check")
    op.drop_column("campaigns", "min_member_level")
    op.drop_column("users", "level")
