"""The referral lifecycle: invitations, sign-ups, partner outcomes, states and their history."""
