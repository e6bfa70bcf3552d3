"""rewards wake-up only when something was queued: NOTIFY serialises the commits that send it

Revision ID: 0017_rewards_wakeup_when_queued
Revises: 0016_rewards_wakeup
Create Date: 2026-12-03 12:50:00+00:00

A transaction that has called pg_notify takes one cluster-wide lock before its commit and keeps it
until the commit is flushed, so notifying transactions commit one after another (no group commit).
Measured with pgbench, 16 clients, on 2 cores: an INSERT-and-COMMIT transaction ran at about 4,100
per second, and about 1,300 per second with a pg_notify added. The trigger of 0016 fired for every
INSERT into rewards and every UPDATE of reversal_requested_at, also when no row changed: every
milestone a referral reached paid that price, also for campaigns without a rule for it. Now only
the statements that queued a reward, and the rows whose reversal is newly requested, notify.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0017_rewards_wakeup_when_queued"
down_revision: str | Sequence[str] | None = "0016_rewards_wakeup"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# referloop.referrals.rewards.models.REWARDS_CHANNEL
CHANNEL = "referloop_rewards"


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("DROP TRIGGER rewards_wake_worker ON rewards")
    # Per statement, over the rows it inserted (a transition table): a partner batch that queues
    # 1,000 rewards notifies once; an INSERT that ON CONFLICT skipped every row does not notify.
    op.execute(
        f"""
        CREATE FUNCTION rewards_wake_worker_if_queued() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM queued) THEN
                PERFORM pg_notify('{CHANNEL}', '');
            END IF;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER rewards_wake_on_queue AFTER INSERT ON rewards REFERENCING NEW TABLE AS queued"
        " FOR EACH STATEMENT EXECUTE FUNCTION rewards_wake_worker_if_queued()"
    )
    # Per row, and only for a reversal newly asked for (rare): PostgreSQL folds the repeats of one
    # transaction into one notification.
    op.execute(
        "CREATE TRIGGER rewards_wake_on_reversal AFTER UPDATE OF reversal_requested_at ON rewards"
        " FOR EACH ROW WHEN (OLD.reversal_requested_at IS NULL AND NEW.reversal_requested_at IS NOT NULL)"
        " EXECUTE FUNCTION rewards_wake_worker()"
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("DROP TRIGGER rewards_wake_on_reversal ON rewards")
    op.execute("DROP TRIGGER rewards_wake_on_queue ON rewards")
    op.execute("DROP FUNCTION rewards_wake_worker_if_queued()")
    op.execute(
        "CREATE TRIGGER rewards_wake_worker AFTER INSERT OR UPDATE OF reversal_requested_at ON rewards"
        " FOR EACH STATEMENT EXECUTE FUNCTION rewards_wake_worker()"
    )
