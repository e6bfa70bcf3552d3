"""referral lifecycle and rewards: referrals with their history and partner receipts; reward rules,
rewards (one per referral, milestone and side), campaign budgets and per-referrer counters

Revision ID: 0011_lifecycle_rewards
Revises: 0010_analytics
Create Date: 2026-11-25 03:50:06.372187+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011_lifecycle_rewards"
down_revision: str | Sequence[str] | None = "0010_analytics"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Fail fast instead of queueing behind a long lock on a busy table.
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.create_table(
        "campaign_budgets",
        sa.Column("campaign_id", sa.UUID(), nullable=False),
        sa.Column("spent", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("rewards", sa.Integer(), server_default="0", nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("rewards >= 0", name=op.f("ck_campaign_budgets_rewards_not_negative")),
        sa.CheckConstraint("spent >= 0", name=op.f("ck_campaign_budgets_spent_not_negative")),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_campaign_budgets_campaign_id_campaigns")
        ),
        sa.PrimaryKeyConstraint("campaign_id", name=op.f("pk_campaign_budgets")),
    )
    op.create_table(
        "reward_counters",
        sa.Column("campaign_id", sa.UUID(), nullable=False),
        sa.Column("member_id", sa.UUID(), nullable=False),
        sa.Column("counter", sa.String(length=60), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("value", sa.BigInteger(), server_default="0", nullable=False),
        sa.CheckConstraint("value >= 0", name=op.f("ck_reward_counters_value_not_negative")),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_reward_counters_campaign_id_campaigns")
        ),
        sa.ForeignKeyConstraint(["member_id"], ["users.id"], name=op.f("fk_reward_counters_member_id_users")),
        sa.PrimaryKeyConstraint(
            "campaign_id", "member_id", "counter", "period_start", name=op.f("pk_reward_counters")
        ),
    )
    op.create_table(
        "reward_rules",
        sa.Column("campaign_id", sa.UUID(), nullable=False),
        sa.Column("milestone", sa.String(length=10), nullable=False),
        sa.Column("role", sa.String(length=10), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=True),
        sa.Column("percent_bps", sa.Integer(), nullable=True),
        sa.Column("max_amount", sa.BigInteger(), nullable=True),
        sa.Column("tiers", postgresql.JSONB(astext_type=sa.Text()), server_default="[]", nullable=False),
        sa.Column("period", sa.String(length=10), nullable=True),
        sa.Column("max_per_referrer", sa.Integer(), nullable=True),
        sa.Column("hold_days", sa.SmallInteger(), server_default="30", nullable=False),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(kind = 'fixed' AND amount IS NOT NULL AND amount >= 0 AND percent_bps IS NULL) OR (kind = 'percent' AND percent_bps IS NOT NULL AND percent_bps BETWEEN 0 AND 10000 AND amount IS NULL)",
            name=op.f("ck_reward_rules_kind_fields"),
        ),
        sa.CheckConstraint("kind IN ('fixed','percent')", name=op.f("ck_reward_rules_kind_known")),
        sa.CheckConstraint(
            "milestone IN ('signed_up','applied','enrolled')", name=op.f("ck_reward_rules_milestone_known")
        ),
        sa.CheckConstraint(
            "period IS NULL OR period IN ('day','week','month','year','campaign')",
            name=op.f("ck_reward_rules_period_known"),
        ),
        sa.CheckConstraint("role IN ('referrer','referee')", name=op.f("ck_reward_rules_role_known")),
        sa.CheckConstraint("hold_days BETWEEN 0 AND 365", name=op.f("ck_reward_rules_hold_days_bounded")),
        sa.CheckConstraint(
            "max_amount IS NULL OR max_amount >= 0", name=op.f("ck_reward_rules_max_amount_not_negative")
        ),
        sa.CheckConstraint(
            "max_per_referrer IS NULL OR max_per_referrer >= 1",
            name=op.f("ck_reward_rules_max_per_referrer_positive"),
        ),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_reward_rules_campaign_id_campaigns")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reward_rules")),
    )
    op.create_index(
        "uq_reward_rules_campaign_milestone_role_live",
        "reward_rules",
        ["campaign_id", "milestone", "role"],
        unique=True,
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.create_table(
        "referrals",
        sa.Column("member_id", sa.UUID(), nullable=False),
        sa.Column("referee_id", sa.UUID(), nullable=True),
        sa.Column("program_id", sa.UUID(), nullable=True),
        sa.Column("university_id", sa.UUID(), nullable=True),
        sa.Column("campaign_id", sa.UUID(), nullable=True),
        sa.Column("campaign_chosen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("held_from_state", sa.String(length=12), nullable=True),
        sa.Column("source", sa.String(length=10), nullable=False),
        sa.Column("attribution_id", sa.UUID(), nullable=True),
        sa.Column("click_id", sa.UUID(), nullable=True),
        sa.Column("referee_label", sa.String(length=40), nullable=False),
        sa.Column("lead_name", sa.Text(), nullable=True),
        sa.Column("lead_email", sa.Text(), nullable=True),
        sa.Column("lead_phone", sa.Text(), nullable=True),
        sa.Column("email_index", sa.LargeBinary(length=32), nullable=True),
        sa.Column("phone_index", sa.LargeBinary(length=32), nullable=True),
        sa.Column("locale", sa.String(length=35), server_default="en", nullable=False),
        sa.Column("fee_amount", sa.BigInteger(), nullable=True),
        sa.Column("fee_currency", sa.String(length=3), nullable=True),
        sa.Column("invited_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("signed_up_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rewarded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "state_changed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "(state = 'fraud_hold') = (held_from_state IS NOT NULL)", name=op.f("ck_referrals_hold_has_state")
        ),
        sa.CheckConstraint(
            "held_from_state IS NULL OR held_from_state IN ('invited','signed_up','applied','enrolled','rewarded','rejected','expired','reversed','fraud_hold')",
            name=op.f("ck_referrals_held_from_state_known"),
        ),
        sa.CheckConstraint("source IN ('invite','signup','click')", name=op.f("ck_referrals_source_known")),
        sa.CheckConstraint(
            "state IN ('invited','signed_up','applied','enrolled','rewarded','rejected','expired','reversed','fraud_hold')",
            name=op.f("ck_referrals_state_known"),
        ),
        sa.CheckConstraint(
            "(program_id IS NULL) = (university_id IS NULL)", name=op.f("ck_referrals_program_has_university")
        ),
        sa.CheckConstraint(
            "fee_amount IS NULL OR fee_amount >= 0", name=op.f("ck_referrals_fee_not_negative")
        ),
        sa.CheckConstraint(
            "referee_id IS NOT NULL OR email_index IS NOT NULL OR phone_index IS NOT NULL OR click_id IS NOT NULL",
            name=op.f("ck_referrals_referee_reachable"),
        ),
        sa.CheckConstraint(
            "referee_id IS NULL OR referee_id <> member_id", name=op.f("ck_referrals_not_self")
        ),
        sa.ForeignKeyConstraint(
            ["attribution_id"], ["attributions.id"], name=op.f("fk_referrals_attribution_id_attributions")
        ),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_referrals_campaign_id_campaigns")
        ),
        sa.ForeignKeyConstraint(["member_id"], ["users.id"], name=op.f("fk_referrals_member_id_users")),
        sa.ForeignKeyConstraint(
            ["program_id"], ["programs.id"], name=op.f("fk_referrals_program_id_programs")
        ),
        sa.ForeignKeyConstraint(["referee_id"], ["users.id"], name=op.f("fk_referrals_referee_id_users")),
        sa.ForeignKeyConstraint(
            ["university_id"], ["universities.id"], name=op.f("fk_referrals_university_id_universities")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_referrals")),
    )
    op.create_index(
        "ix_referrals_attribution_id",
        "referrals",
        ["attribution_id"],
        unique=False,
        postgresql_where=sa.text("attribution_id IS NOT NULL"),
    )
    op.create_index(
        "ix_referrals_click_id",
        "referrals",
        ["click_id"],
        unique=False,
        postgresql_where=sa.text("click_id IS NOT NULL"),
    )
    op.create_index(
        "ix_referrals_email_index",
        "referrals",
        ["email_index"],
        unique=False,
        postgresql_where=sa.text("email_index IS NOT NULL"),
    )
    op.create_index(
        "ix_referrals_invited_expiry",
        "referrals",
        ["expires_at"],
        unique=False,
        postgresql_where=sa.text("state = 'invited'"),
    )
    op.create_index("ix_referrals_member_id_id", "referrals", ["member_id", "id"], unique=False)
    op.create_index(
        "ix_referrals_phone_index",
        "referrals",
        ["phone_index"],
        unique=False,
        postgresql_where=sa.text("phone_index IS NOT NULL"),
    )
    op.create_index("ix_referrals_program_id_state", "referrals", ["program_id", "state"], unique=False)
    op.create_index(
        "ix_referrals_referee_id",
        "referrals",
        ["referee_id"],
        unique=False,
        postgresql_where=sa.text("referee_id IS NOT NULL"),
    )
    op.create_index("ix_referrals_university_id", "referrals", ["university_id"], unique=False)
    op.create_table(
        "partner_outcomes",
        sa.Column("university_id", sa.UUID(), nullable=False),
        sa.Column("external_ref", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=30), nullable=False),
        sa.Column("referral_id", sa.UUID(), nullable=True),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["referral_id"], ["referrals.id"], name=op.f("fk_partner_outcomes_referral_id_referrals")
        ),
        sa.ForeignKeyConstraint(
            ["university_id"],
            ["universities.id"],
            name=op.f("fk_partner_outcomes_university_id_universities"),
        ),
        sa.PrimaryKeyConstraint("university_id", "external_ref", "kind", name=op.f("pk_partner_outcomes")),
    )
    op.create_index(
        "ix_partner_outcomes_referral_id",
        "partner_outcomes",
        ["referral_id"],
        unique=False,
        postgresql_where=sa.text("referral_id IS NOT NULL"),
    )
    op.create_table(
        "referral_events",
        sa.Column("referral_id", sa.UUID(), nullable=False),
        sa.Column("member_id", sa.UUID(), nullable=False),
        sa.Column("from_state", sa.String(length=12), nullable=True),
        sa.Column("to_state", sa.String(length=12), nullable=False),
        sa.Column("actor_type", sa.String(length=10), nullable=False),
        sa.Column("actor_id", sa.UUID(), nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.CheckConstraint(
            "actor_type IN ('member','staff','partner','system')",
            name=op.f("ck_referral_events_actor_type_known"),
        ),
        sa.ForeignKeyConstraint(
            ["referral_id"], ["referrals.id"], name=op.f("fk_referral_events_referral_id_referrals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_referral_events")),
    )
    op.create_index(
        "ix_referral_events_referral_id_id", "referral_events", ["referral_id", "id"], unique=False
    )
    op.create_table(
        "rewards",
        sa.Column("referral_id", sa.UUID(), nullable=False),
        sa.Column("referrer_id", sa.UUID(), nullable=False),
        sa.Column("member_id", sa.UUID(), nullable=True),
        sa.Column("role", sa.String(length=10), nullable=False),
        sa.Column("milestone", sa.String(length=10), nullable=False),
        sa.Column("campaign_id", sa.UUID(), nullable=False),
        sa.Column("rule_id", sa.UUID(), nullable=False),
        sa.Column("program_id", sa.UUID(), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("reason", sa.String(length=40), nullable=True),
        sa.Column("basis", sa.String(length=200), nullable=True),
        sa.Column("ledger_transfer_id", sa.UUID(), nullable=True),
        sa.Column("reached_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("release_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reversal_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reversed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "charged_counters", postgresql.JSONB(astext_type=sa.Text()), server_default="[]", nullable=False
        ),
        sa.Column("clawed_back_amount", sa.BigInteger(), nullable=True),
        sa.Column("receivable_amount", sa.BigInteger(), nullable=True),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "(status = 'skipped') = (reason IS NOT NULL)", name=op.f("ck_rewards_skipped_has_reason")
        ),
        sa.CheckConstraint(
            "milestone IN ('signed_up','applied','enrolled')", name=op.f("ck_rewards_milestone_known")
        ),
        sa.CheckConstraint("role IN ('referrer','referee')", name=op.f("ck_rewards_role_known")),
        sa.CheckConstraint(
            "status IN ('queued','pending','released','voided','clawed_back','skipped')",
            name=op.f("ck_rewards_status_known"),
        ),
        sa.CheckConstraint(
            "status NOT IN ('pending','released','voided','clawed_back') OR (amount IS NOT NULL AND ledger_transfer_id IS NOT NULL AND member_id IS NOT NULL)",
            name=op.f("ck_rewards_granted_has_transfer"),
        ),
        sa.CheckConstraint("amount IS NULL OR amount > 0", name=op.f("ck_rewards_amount_positive")),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_rewards_campaign_id_campaigns")
        ),
        sa.ForeignKeyConstraint(["member_id"], ["users.id"], name=op.f("fk_rewards_member_id_users")),
        sa.ForeignKeyConstraint(["program_id"], ["programs.id"], name=op.f("fk_rewards_program_id_programs")),
        sa.ForeignKeyConstraint(
            ["referral_id"], ["referrals.id"], name=op.f("fk_rewards_referral_id_referrals")
        ),
        sa.ForeignKeyConstraint(["referrer_id"], ["users.id"], name=op.f("fk_rewards_referrer_id_users")),
        sa.ForeignKeyConstraint(
            ["rule_id"], ["reward_rules.id"], name=op.f("fk_rewards_rule_id_reward_rules")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rewards")),
    )
    op.create_index(
        "ix_rewards_member_id",
        "rewards",
        ["member_id", "id"],
        unique=False,
        postgresql_where=sa.text("member_id IS NOT NULL"),
    )
    op.create_index(
        "ix_rewards_queued",
        "rewards",
        ["reached_at", "id"],
        unique=False,
        postgresql_where=sa.text("status = 'queued'"),
    )
    op.create_index("ix_rewards_referrer_id", "rewards", ["referrer_id"], unique=False)
    op.create_index(
        "ix_rewards_release_due",
        "rewards",
        ["release_at"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_rewards_reversal_due",
        "rewards",
        ["reversal_requested_at"],
        unique=False,
        postgresql_where=sa.text(
            "reversal_requested_at IS NOT NULL AND status IN ('queued','pending','released')"
        ),
    )
    op.create_index(
        "uq_rewards_referral_milestone_role", "rewards", ["referral_id", "milestone", "role"], unique=True
    )


def downgrade() -> None:
    op.drop_index("uq_rewards_referral_milestone_role", table_name="rewards")
    op.drop_index(
        "ix_rewards_reversal_due",
        table_name="rewards",
        postgresql_where=sa.text(
            "reversal_requested_at IS NOT NULL AND status IN ('queued','pending','released')"
        ),
    )
    op.drop_index(
        "ix_rewards_release_due", table_name="rewards", postgresql_where=sa.text("status = 'pending'")
    )
    op.drop_index("ix_rewards_referrer_id", table_name="rewards")
    op.drop_index("ix_rewards_queued", table_name="rewards", postgresql_where=sa.text("status = 'queued'"))
    op.drop_index(
        "ix_rewards_member_id", table_name="rewards", postgresql_where=sa.text("member_id IS NOT NULL")
    )
    op.drop_table("rewards")
    op.drop_index("ix_referral_events_referral_id_id", table_name="referral_events")
    op.drop_table("referral_events")
    op.drop_index(
        "ix_partner_outcomes_referral_id",
        table_name="partner_outcomes",
        postgresql_where=sa.text("referral_id IS NOT NULL"),
    )
    op.drop_table("partner_outcomes")
    op.drop_index("ix_referrals_university_id", table_name="referrals")
    op.drop_index(
        "ix_referrals_referee_id", table_name="referrals", postgresql_where=sa.text("referee_id IS NOT NULL")
    )
    op.drop_index("ix_referrals_program_id_state", table_name="referrals")
    op.drop_index(
        "ix_referrals_phone_index",
        table_name="referrals",
        postgresql_where=sa.text("phone_index IS NOT NULL"),
    )
    op.drop_index("ix_referrals_member_id_id", table_name="referrals")
    op.drop_index(
        "ix_referrals_invited_expiry", table_name="referrals", postgresql_where=sa.text("state = 'invited'")
    )
    op.drop_index(
        "ix_referrals_email_index",
        table_name="referrals",
        postgresql_where=sa.text("email_index IS NOT NULL"),
    )
    op.drop_index(
        "ix_referrals_click_id", table_name="referrals", postgresql_where=sa.text("click_id IS NOT NULL")
    )
    op.drop_index(
        "ix_referrals_attribution_id",
        table_name="referrals",
        postgresql_where=sa.text("attribution_id IS NOT NULL"),
    )
    op.drop_table("referrals")
    op.drop_index(
        "uq_reward_rules_campaign_milestone_role_live",
        table_name="reward_rules",
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.drop_table("reward_rules")
    op.drop_table("reward_counters")
    op.drop_table("campaign_budgets")
