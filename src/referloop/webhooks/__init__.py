"""Outbound webhooks, signed as the Standard Webhooks spec says (https://www.standardwebhooks.com).

Endpoints are registered by partners (they receive their university's events only) and by operators
(staff; all events, or a chosen set of programs). A consumer of domain outbox topics turns each event
into one message and one delivery per matching endpoint; a periodic job sends due deliveries, logs
every attempt, retries with exponential backoff for a bounded window, and disables an endpoint that
has only failed for a configurable time (emailing its owner)."""
