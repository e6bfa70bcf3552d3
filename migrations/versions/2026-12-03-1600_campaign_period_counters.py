"""campaign-period reward counters start at one fixed instant, not at the editable starts_at

Revision ID: 0019_campaign_period_counters
Revises: 0018_webhook_no_reason
Create Date: 2026-12-03 16:00:00+00:00

A counter of the `campaign` period (`spend:campaign`, `enrolments:campaign`, `rule:<id>` of a rule
whose period is `campaign`) was keyed by the campaign's `starts_at`: an edit of it began new counters
at 0 (resetting the caps) while voids decremented the old rows. Counters are keyed by campaign
already, so the period now starts at 1970-01-01 UTC (`budget.CAMPAIGN_PERIOD_START`). This moves
every such row there, adding up the rows that meet (one per `starts_at` the campaign had), and points
the charges recorded on rewards (`charged_counters`, which a void gives back) at the moved rows.

A `rule:<id>` row is taken as a campaign-period row when its rule's period is `campaign` now and it
starts at the campaign's current `starts_at` or at a moment no calendar period starts at (not a UTC
midnight). A row at a UTC midnight other than the current `starts_at` may be a calendar row from
before the rule's period changed: it stays where it is, as do the charges that name it.

The downgrade moves the rows back to each campaign's current `starts_at` (where the older code looks
for them), adding them up the same way; the split the upgrade merged is not restored.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0019_campaign_period_counters"
down_revision: str | Sequence[str] | None = "0018_webhook_no_reason"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FIXED = "CAST('1970-01-01T00:00:00+00:00' AS timestamptz)"
FIXED_TEXT = "1970-01-01T00:00:00+00:00"  # as `datetime.isoformat()` writes it in charged_counters


def _campaign_period(counter: str, start: str, campaign: str) -> str:
    """SQL: (counter, start) of `campaign` is a row of the campaign period kept at a `starts_at`."""
    return (
        f"({start} <> {FIXED} AND ({counter} IN ('spend:campaign', 'enrolments:campaign') OR EXISTS ("  # noqa: S608
        f"  SELECT 1 FROM reward_rules r JOIN campaigns ca ON ca.id = r.campaign_id"
        f"  WHERE {counter} = 'rule:' || CAST(r.id AS text) AND r.campaign_id = {campaign}"
        f"    AND r.period = 'campaign'"
        f"    AND ({start} = ca.starts_at"
        f"      OR {start} <> date_trunc('day', {start} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'))))"
    )


def _move(target: str, target_json: str, moved: str, charge_is_moved: str) -> None:
    """Add the `moved` counter rows up into one row per key at `target` (SQL, of the row `c`), then
    point the rewards' charges that named them (`charge_is_moved`, of the charge `e` of reward `w`)
    at it (`target_json`, of `w`)."""
    op.execute(
        "INSERT INTO reward_counters AS t (campaign_id, member_id, counter, period_start, value)"  # noqa: S608 - fixed text
        f" SELECT c.campaign_id, c.member_id, c.counter, {target}, sum(c.value)"
        f" FROM reward_counters c WHERE {moved}"
        " GROUP BY c.campaign_id, c.member_id, c.counter"
        " ON CONFLICT (campaign_id, member_id, counter, period_start)"
        " DO UPDATE SET value = t.value + EXCLUDED.value"
    )
    op.execute(f"DELETE FROM reward_counters c WHERE {moved}")  # noqa: S608 - fixed text
    op.execute(
        "UPDATE rewards w SET charged_counters = ("  # noqa: S608 - fixed text
        f"  SELECT jsonb_agg(CASE WHEN {charge_is_moved}"
        f"    THEN jsonb_set(e, '{{period_start}}', {target_json}) ELSE e END ORDER BY n)"
        "  FROM jsonb_array_elements(w.charged_counters) WITH ORDINALITY AS x(e, n))"
        " WHERE EXISTS (SELECT 1 FROM jsonb_array_elements(w.charged_counters) AS x(e)"
        f"  WHERE {charge_is_moved})"
    )


CHARGE_START = "CAST(e->>'period_start' AS timestamptz)"


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    # Grants and voids move these rows: none may change one between the sum and the delete.
    op.execute("LOCK TABLE reward_counters IN SHARE ROW EXCLUSIVE MODE")
    _move(
        FIXED,
        f"to_jsonb(CAST('{FIXED_TEXT}' AS text))",
        _campaign_period("c.counter", "c.period_start", "c.campaign_id"),
        _campaign_period("e->>'counter'", CHARGE_START, "w.campaign_id"),
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("LOCK TABLE reward_counters IN SHARE ROW EXCLUSIVE MODE")
    _move(
        "(SELECT ca.starts_at FROM campaigns ca WHERE ca.id = c.campaign_id)",
        "(SELECT to_jsonb(ca.starts_at) FROM campaigns ca WHERE ca.id = w.campaign_id)",
        f"c.period_start = {FIXED}",
        f"{CHARGE_START} = {FIXED}",
    )
