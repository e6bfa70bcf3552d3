"""Append-only, hash-chained audit log. Other domains call `record(...)` (or `record_many`) in their
own transaction."""

from referloop.compliance.audit.service import AUDIT_CHAINS, AuditRecord, record, record_many, verify_chain

__all__ = ["AUDIT_CHAINS", "AuditRecord", "record", "record_many", "verify_chain"]
