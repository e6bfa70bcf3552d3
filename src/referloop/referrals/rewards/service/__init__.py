"""Rewards: `queue` (called by the lifecycle), `rules` (staff), `grant`, `release` and `reversal`
(the worker's jobs), `views` (what members see)."""
