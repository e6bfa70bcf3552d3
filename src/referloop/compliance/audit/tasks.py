"""The worker logs an audit anchor (the head of every chain) every ten minutes: with the logs shipped
off the machine, a chain cut back later is found by `referloop audit verify --anchor` (the log
lines, one per anchor, are the anchor file)."""

from __future__ import annotations

import structlog

from referloop.compliance.audit.service import anchor_line, chain_heads
from referloop.core.db import utcnow
from referloop.core.periodic import periodic
from referloop.runtime import Runtime

log = structlog.get_logger(__name__)

ANCHOR_EVERY_SECONDS = 600.0


@periodic("audit.anchor", every=ANCHOR_EVERY_SECONDS)
async def log_anchor(rt: Runtime) -> int:
    async with rt.db.read_sessionmaker() as session:
        heads = await chain_heads(session)
    log.info("audit anchor", anchor=anchor_line(heads, utcnow()))
    return 0
