"""Tables of outbound webhooks: endpoints, messages (one per event), deliveries (one per message and
endpoint) and attempts (the delivery log)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from referloop.core.db import Base, IdMixin, SoftDeleteMixin, TimestampMixin, utcnow


class OwnerType(StrEnum):
    partner = "partner"  # registered with a partner API key: its university's events only
    operator = "operator"  # registered by staff: all events, or those of chosen programs


class DeliveryStatus(StrEnum):
    pending = "pending"  # due at next_attempt_at
    succeeded = "succeeded"
    failed = "failed"  # the retry window ran out; a manual redelivery makes it pending again


class AttemptTrigger(StrEnum):
    scheduled = "scheduled"
    manual = "manual"  # the first attempt after a manual redelivery


def _in(values: type[StrEnum]) -> str:
    return ",".join(f"'{v.value}'" for v in values)


class WebhookEndpoint(IdMixin, TimestampMixin, SoftDeleteMixin, Base):
    __tablename__ = "webhook_endpoints"

    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str] = mapped_column(String(500), default="", server_default="")
    # `whsec_...`, field-encrypted. The previous secret keeps signing (a second signature) until
    # `previous_secret_expires_at`, so receivers can switch without missing a message.
    secret: Mapped[str] = mapped_column(Text)
    previous_secret: Mapped[str | None] = mapped_column(Text)
    previous_secret_expires_at: Mapped[datetime | None]
    event_types: Mapped[list[str]] = mapped_column(ARRAY(String(50)), default=list, server_default="{}")
    owner_type: Mapped[str] = mapped_column(String(10))
    # Partner endpoints: their university (always set). Operator endpoints: an optional filter.
    university_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("universities.id"))
    program_ids: Mapped[list[uuid.UUID]] = mapped_column(
        ARRAY(UUID(as_uuid=True)),
        default=list,
        server_default="{}",
    )
    owner_email: Mapped[str] = mapped_column(String(254))
    created_by: Mapped[uuid.UUID | None]  # the partner key or the staff user that registered it
    disabled_at: Mapped[datetime | None]
    disabled_reason: Mapped[str | None] = mapped_column(String(500))
    # Start of the current run of failures (NULL after any success): the disable clock.
    failing_since: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint(f"owner_type IN ({_in(OwnerType)})", name="owner_type_known"),
        CheckConstraint(
            "owner_type = 'operator' OR university_id IS NOT NULL", name="partner_has_university"
        ),
        Index("ix_webhook_endpoints_university_id", "university_id"),
    )


class WebhookMessage(Base):
    """One event as sent: `id` is the outbox event's id, so the message id is stable across endpoints
    and retries (the `webhook-id` header is `msg_<id hex>`)."""

    __tablename__ = "webhook_messages"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    event_type: Mapped[str] = mapped_column(String(50))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    university_id: Mapped[uuid.UUID | None]
    program_id: Mapped[uuid.UUID | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)


class WebhookDelivery(IdMixin, Base):
    __tablename__ = "webhook_deliveries"

    message_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_messages.id"))
    endpoint_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_endpoints.id"))
    status: Mapped[str] = mapped_column(String(10), default=DeliveryStatus.pending.value)
    attempts: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None]
    # Retries stop `webhook_retry_window_seconds` after this (creation, or the last manual redelivery).
    window_started_at: Mapped[datetime]
    manual_pending: Mapped[bool] = mapped_column(default=False, server_default="false")
    last_attempt_at: Mapped[datetime | None]
    last_status_code: Mapped[int | None] = mapped_column(SmallInteger)
    last_error: Mapped[str | None] = mapped_column(String(500))
    succeeded_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)

    __table_args__ = (
        CheckConstraint(f"status IN ({_in(DeliveryStatus)})", name="status_known"),
        CheckConstraint("status <> 'pending' OR next_attempt_at IS NOT NULL", name="pending_is_scheduled"),
        Index("uq_webhook_deliveries_message_endpoint", "message_id", "endpoint_id", unique=True),
        Index("ix_webhook_deliveries_endpoint_id_id", "endpoint_id", "id"),
        # The sender's work queue: only pending rows are indexed.
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
    )


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_deliveries.id"))
    attempted_at: Mapped[datetime]
    trigger: Mapped[str] = mapped_column(String(10))
    status_code: Mapped[int | None] = mapped_column(SmallInteger)
    latency_ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(500))
    response_excerpt: Mapped[str | None] = mapped_column(String(1000))

    __table_args__ = (
        CheckConstraint(f"trigger IN ({_in(AttemptTrigger)})", name="trigger_known"),
        Index("ix_webhook_attempts_delivery_id", "delivery_id", "id"),
    )
