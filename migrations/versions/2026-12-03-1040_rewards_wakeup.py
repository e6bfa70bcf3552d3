"""rewards wake-up: a statement trigger notifies the worker when rewards are queued or asked back

Revision ID: 0016_rewards_wakeup
Revises: 0015_payout_method_status
Create Date: 2026-12-03 10:40:00+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016_rewards_wakeup"
down_revision: str | Sequence[str] | None = "0015_payout_method_status"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# referloop.referrals.rewards.models.REWARDS_CHANNEL
CHANNEL = "referloop_rewards"


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    # Per statement, not per row: a partner batch that queues 1,000 rewards notifies once, and
    # PostgreSQL folds the notifications of one transaction into one, delivered at its commit.
    op.execute(
        f"""
        CREATE FUNCTION rewards_wake_worker() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', '');
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER rewards_wake_worker AFTER INSERT OR UPDATE OF reversal_requested_at ON rewards"
        " FOR EACH STATEMENT EXECUTE FUNCTION rewards_wake_worker()"
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("DROP TRIGGER rewards_wake_worker ON rewards")
    op.execute("DROP FUNCTION rewards_wake_worker()")
