"""Errors of the analytics API."""

from __future__ import annotations

from referloop.core.errors import InvalidInput


class BadRange(InvalidInput):
    code = "analytics_bad_range"
    title = "Date range not accepted"
