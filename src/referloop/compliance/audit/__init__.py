"""Append-only, hash-chained audit log. Other domains call `record(...)` (or `record_many`) in their
own transaction."""

from referloop.compliance.audit.service import (
    AUDIT_CHAINS,
    AuditRecord,
    ChainHead,
    anchor_line,
    chain_heads,
    check_anchors,
    parse_anchors,
    record,
    record_many,
    verify_chain,
)

__all__ = [
    "AUDIT_CHAINS",
    "AuditRecord",
    "ChainHead",
    "anchor_line",
    "chain_heads",
    "check_anchors",
    "parse_anchors",
    "record",
    "record_many",
    "verify_chain",
]
