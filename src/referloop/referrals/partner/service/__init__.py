"""Partner API services: keys (authentication, staff management) and outcome reports."""
