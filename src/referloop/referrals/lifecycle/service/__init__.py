"""The referral lifecycle's API for other packages (the partner API calls `apply_partner_outcome`).

Modules: `states` (the state machine), `invites`, `signups`, `outcomes` (one partner report),
`outcome_batches` (a partner's batch, set-wise), `queries`, `staff`,
`expiry`, `leads` (contact data)."""

from referloop.referrals.lifecycle.service.outcomes import (
    OutcomeKind,
    OutcomeReport,
    OutcomeResult,
    apply_partner_outcome,
)

__all__ = ["OutcomeKind", "OutcomeReport", "OutcomeResult", "apply_partner_outcome"]
