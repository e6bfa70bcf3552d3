"""referrals: catalogue (universities, programs), campaigns, vanity codes, devices, clicks, attributions

`clicks` is partitioned by month on clicked_at; the click flusher creates partitions on demand
(referrals/service/clicks.py), so this migration creates none.

Revision ID: 0003_referrals
Revises: 0001
Create Date: 2026-11-25 03:11:17.532048+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0003_referrals'
down_revision: str | Sequence[str] | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Fail fast instead of queueing behind a long lock on a busy table.
    op.execute("SET LOCAL lock_timeout = '5s'")
    # Typo-tolerant program search (GIN trigram index below). Contrib extension, shipped with PostgreSQL.
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.create_table('campaigns',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), server_default='', nullable=False),
    sa.Column('state', sa.String(length=10), server_default='draft', nullable=False),
    sa.Column('priority', sa.Integer(), server_default='0', nullable=False),
    sa.Column('starts_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ends_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('budget_total_amount', sa.BigInteger(), nullable=True),
    sa.Column('per_referrer_amount', sa.BigInteger(), nullable=True),
    sa.Column('per_referrer_period', sa.String(length=10), nullable=True),
    sa.Column('eligible_countries', postgresql.ARRAY(sa.String(length=2)), server_default='{}', nullable=False),
    sa.Column('require_email_verified', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('require_phone_verified', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('required_kyc_status', sa.String(length=20), nullable=True),
    sa.Column('attribution_window_days', sa.SmallInteger(), server_default='30', nullable=False),
    sa.Column('activated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("per_referrer_period IS NULL OR per_referrer_period IN ('day','week','month','year','campaign')", name=op.f('ck_campaigns_period_known')),
    sa.CheckConstraint("state IN ('draft','active','paused','ended')", name=op.f('ck_campaigns_state_known')),
    sa.CheckConstraint('(per_referrer_amount IS NULL) = (per_referrer_period IS NULL)', name=op.f('ck_campaigns_cap_has_period')),
    sa.CheckConstraint('attribution_window_days BETWEEN 1 AND 365', name=op.f('ck_campaigns_window_days_bounded')),
    sa.CheckConstraint('budget_total_amount IS NULL OR budget_total_amount >= 0', name=op.f('ck_campaigns_budget_not_negative')),
    sa.CheckConstraint('ends_at IS NULL OR ends_at > starts_at', name=op.f('ck_campaigns_window_ordered')),
    sa.CheckConstraint('per_referrer_amount IS NULL OR per_referrer_amount >= 0', name=op.f('ck_campaigns_cap_not_negative')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_campaigns'))
    )
    op.create_index('ix_campaigns_state_starts_at', 'campaigns', ['state', 'starts_at'], unique=False)
    op.create_table('clicks',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('clicked_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('program_id', sa.UUID(), nullable=False),
    sa.Column('member_id', sa.UUID(), nullable=False),
    sa.Column('code', sa.String(length=20), nullable=False),
    sa.Column('ip_hash', sa.LargeBinary(length=32), nullable=True),
    sa.Column('user_agent', sa.String(length=512), nullable=True),
    sa.Column('referer', sa.String(length=1024), nullable=True),
    sa.Column('country', sa.String(length=2), nullable=True),
    sa.Column('is_bot', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id', 'clicked_at', name=op.f('pk_clicks')),
    postgresql_partition_by='RANGE (clicked_at)'
    )
    op.create_index('ix_clicks_member_id_clicked_at', 'clicks', ['member_id', 'clicked_at'], unique=False)
    op.create_table('universities',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('slug', sa.String(length=100), nullable=False),
    sa.Column('country', sa.String(length=2), nullable=False),
    sa.Column('website_url', sa.String(length=2048), nullable=True),
    sa.Column('description', sa.Text(), server_default='', nullable=False),
    sa.Column('active', sa.Boolean(), server_default='true', nullable=False),
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_universities'))
    )
    op.create_index('uq_universities_slug_live', 'universities', ['slug'], unique=True, postgresql_where=sa.text('deleted_at IS NULL'))
    op.create_table('member_devices',
    sa.Column('member_id', sa.UUID(), nullable=False),
    sa.Column('device_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('first_seen_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['member_id'], ['users.id'], name=op.f('fk_member_devices_member_id_users')),
    sa.PrimaryKeyConstraint('member_id', 'device_hash', name=op.f('pk_member_devices'))
    )
    op.create_index('ix_member_devices_device_hash', 'member_devices', ['device_hash'], unique=False)
    op.create_table('programs',
    sa.Column('university_id', sa.UUID(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('slug', sa.String(length=120), nullable=False),
    sa.Column('short_code', sa.String(length=8), nullable=False),
    sa.Column('country', sa.String(length=2), nullable=False),
    sa.Column('level', sa.String(length=20), nullable=False),
    sa.Column('intakes', postgresql.ARRAY(sa.Date()), server_default='{}', nullable=False),
    sa.Column('fee_amount', sa.BigInteger(), nullable=False),
    sa.Column('fee_currency', sa.String(length=3), nullable=False),
    sa.Column('description', sa.Text(), server_default='', nullable=False),
    sa.Column('landing_url', sa.String(length=2048), nullable=False),
    sa.Column('active', sa.Boolean(), server_default='true', nullable=False),
    sa.Column('search_text', sa.Text(), server_default='', nullable=False),
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("level IN ('undergraduate','postgraduate','diploma','certificate')", name=op.f('ck_programs_level_known')),
    sa.CheckConstraint('fee_amount >= 0', name=op.f('ck_programs_fee_not_negative')),
    sa.ForeignKeyConstraint(['university_id'], ['universities.id'], name=op.f('fk_programs_university_id_universities')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_programs'))
    )
    op.create_index('ix_programs_country_level', 'programs', ['country', 'level'], unique=False)
    op.create_index('ix_programs_search_text_trgm', 'programs', ['search_text'], unique=False, postgresql_using='gin', postgresql_ops={'search_text': 'gin_trgm_ops'})
    op.create_index('uq_programs_short_code', 'programs', ['short_code'], unique=True)
    op.create_index('uq_programs_university_slug_live', 'programs', ['university_id', 'slug'], unique=True, postgresql_where=sa.text('deleted_at IS NULL'))
    op.create_table('vanity_codes',
    sa.Column('member_id', sa.UUID(), nullable=False),
    sa.Column('code', sa.String(length=20), nullable=False),
    sa.Column('code_key', sa.String(length=20), nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('replaced_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_by', sa.UUID(), nullable=True),
    sa.Column('revoked_reason', sa.String(length=200), nullable=True),
    sa.Column('id', sa.UUID(), nullable=False),
    sa.CheckConstraint("status IN ('active','replaced','revoked')", name=op.f('ck_vanity_codes_status_known')),
    sa.ForeignKeyConstraint(['member_id'], ['users.id'], name=op.f('fk_vanity_codes_member_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_vanity_codes'))
    )
    op.create_index('uq_vanity_codes_code_key', 'vanity_codes', ['code_key'], unique=True)
    op.create_index('uq_vanity_codes_member_active', 'vanity_codes', ['member_id'], unique=True, postgresql_where=sa.text("status = 'active'"))
    op.create_table('attributions',
    sa.Column('referee_id', sa.UUID(), nullable=False),
    sa.Column('member_id', sa.UUID(), nullable=False),
    sa.Column('program_id', sa.UUID(), nullable=True),
    sa.Column('campaign_id', sa.UUID(), nullable=True),
    sa.Column('click_id', sa.UUID(), nullable=True),
    sa.Column('via', sa.String(length=10), nullable=False),
    sa.Column('code', sa.String(length=20), nullable=True),
    sa.Column('attributed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('id', sa.UUID(), nullable=False),
    sa.CheckConstraint("via IN ('click','code')", name=op.f('ck_attributions_via_known')),
    sa.CheckConstraint('referee_id <> member_id', name=op.f('ck_attributions_not_self')),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_attributions_campaign_id_campaigns')),
    sa.ForeignKeyConstraint(['member_id'], ['users.id'], name=op.f('fk_attributions_member_id_users')),
    sa.ForeignKeyConstraint(['program_id'], ['programs.id'], name=op.f('fk_attributions_program_id_programs')),
    sa.ForeignKeyConstraint(['referee_id'], ['users.id'], name=op.f('fk_attributions_referee_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_attributions'))
    )
    op.create_index('ix_attributions_member_id', 'attributions', ['member_id'], unique=False)
    op.create_index('uq_attributions_referee_id', 'attributions', ['referee_id'], unique=True)
    op.create_table('campaign_programs',
    sa.Column('campaign_id', sa.UUID(), nullable=False),
    sa.Column('program_id', sa.UUID(), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_campaign_programs_campaign_id_campaigns'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['program_id'], ['programs.id'], name=op.f('fk_campaign_programs_program_id_programs')),
    sa.PrimaryKeyConstraint('campaign_id', 'program_id', name=op.f('pk_campaign_programs'))
    )
    op.create_index('ix_campaign_programs_program_id', 'campaign_programs', ['program_id'], unique=False)


def downgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    op.drop_index('ix_campaign_programs_program_id', table_name='campaign_programs')
    op.drop_table('campaign_programs')
    op.drop_index('uq_attributions_referee_id', table_name='attributions')
    op.drop_index('ix_attributions_member_id', table_name='attributions')
    op.drop_table('attributions')
    op.drop_index('uq_vanity_codes_member_active', table_name='vanity_codes', postgresql_where=sa.text("status = 'active'"))
    op.drop_index('uq_vanity_codes_code_key', table_name='vanity_codes')
    op.drop_table('vanity_codes')
    op.drop_index('uq_programs_university_slug_live', table_name='programs', postgresql_where=sa.text('deleted_at IS NULL'))
    op.drop_index('uq_programs_short_code', table_name='programs')
    op.drop_index('ix_programs_search_text_trgm', table_name='programs', postgresql_using='gin', postgresql_ops={'search_text': 'gin_trgm_ops'})
    op.drop_index('ix_programs_country_level', table_name='programs')
    op.drop_table('programs')
    op.drop_index('ix_member_devices_device_hash', table_name='member_devices')
    op.drop_table('member_devices')
    op.drop_index('uq_universities_slug_live', table_name='universities', postgresql_where=sa.text('deleted_at IS NULL'))
    op.drop_table('universities')
    op.drop_index('ix_clicks_member_id_clicked_at', table_name='clicks')
    op.drop_table('clicks')
    op.drop_index('ix_campaigns_state_starts_at', table_name='campaigns')
    op.drop_table('campaigns')
    # ### end Alembic commands ###
