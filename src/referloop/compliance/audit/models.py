from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, LargeBinary, SmallInteger, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from referloop.core.db import Base


class AuditEntry(Base):
    """One recorded change. The database refuses UPDATE, DELETE and TRUNCATE on this table
    (trigger in the migration). The log is `AUDIT_CHAINS` hash chains (service.py): `row_hash` chains
    each row to the one before it in its `chain`, whose `seq` runs 1, 2, 3... without gaps. There is no
    global order across chains: sort by (created_at, id) for one."""

    __tablename__ = "audit_log"

    chain: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    id: Mapped[uuid.UUID] = mapped_column(unique=True)
    created_at: Mapped[datetime]
    actor_id: Mapped[uuid.UUID | None]
    actor_type: Mapped[str] = mapped_column(String(20))  # member, staff, partner, system
    action: Mapped[str] = mapped_column(String(100))
    target_type: Mapped[str | None] = mapped_column(String(50))
    target_id: Mapped[str | None] = mapped_column(String(100))
    # none_as_null: an absent value is SQL NULL, not the JSON literal `null`.
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    request_id: Mapped[str | None] = mapped_column(String(128))
    prev_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    row_hash: Mapped[bytes] = mapped_column(LargeBinary(32))

    __table_args__ = (
        Index("ix_audit_log_target", "target_type", "target_id"),
        Index("ix_audit_log_actor_id", "actor_id"),
        Index("ix_audit_log_action_created_at", "action", "created_at"),
    )
