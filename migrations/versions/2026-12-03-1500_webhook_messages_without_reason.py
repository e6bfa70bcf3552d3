"""webhook messages keep no state-change reasons (staff's fraud-hold reasons reached partners)

Revision ID: 0018_webhook_no_reason
Revises: 0017_rewards_wakeup_when_queued
Create Date: 2026-12-03 15:00:00+00:00

`referral.state_changed` messages carried the lifecycle's free-text reason, staff's fraud-hold
suspicions included; receivers see the stored payload again in the delivery log and in every retry
or redelivery. New messages have no `reason`; this removes it from the stored ones. The removed text stays in `referral_events`, the audit log and the outbox, so the
downgrade has nothing to restore.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0018_webhook_no_reason"
down_revision: str | Sequence[str] | None = "0017_rewards_wakeup_when_queued"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(
        "UPDATE webhook_messages SET payload = payload #- '{data,reason}'"
        " WHERE event_type = 'referral.state_changed' AND payload #> '{data,reason}' IS NOT NULL"
    )


def downgrade() -> None:
    pass
