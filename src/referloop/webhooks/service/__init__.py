"""Outbound webhooks: endpoints (registration, secrets) and deliveries (fan-out, sender, log)."""
