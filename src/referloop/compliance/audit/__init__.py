"""Append-only, hash-chained audit log. Other domains call `record(...)` in their own transaction."""

from referloop.compliance.audit.service import record, verify_chain

__all__ = ["record", "verify_chain"]
