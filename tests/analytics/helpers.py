"""Helpers for the analytics tests: synthetic lifecycle events (payloads as the referrals contract
defines them), handled through the real consumers and the inbox, and the staff funnel read back."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import select

from referloop.analytics import tasks  # noqa: F401 - registers the consumers
from referloop.core.context import RequestContext
from referloop.core.ids import uuid7
from referloop.core.outbox.consumers import handle_once, registry
from referloop.core.outbox.models import OutboxEvent
from referloop.referrals.lifecycle.service.outcomes import OutcomeKind, OutcomeReport, apply_partner_outcome
from referloop.runtime import Runtime

CONSUMERS = {
    "referrals.referral_created": "analytics.referral_created",
    "referrals.state_changed": "analytics.state_changed",
}


@dataclass
class Referral:
    referrer_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    program_id: str | None = field(default_factory=lambda: str(uuid.uuid4()))
    university_id: str | None = field(default_factory=lambda: str(uuid.uuid4()))
    campaign_id: str | None = field(default_factory=lambda: str(uuid.uuid4()))
    referral_id: str = field(default_factory=lambda: str(uuid7()))

    def created(self, state: str, at: datetime) -> dict[str, Any]:
        return {
            "referral_id": self.referral_id,
            "referrer_id": self.referrer_id,
            "program_id": self.program_id,
            "university_id": self.university_id,
            "campaign_id": self.campaign_id,
            "state": state,
            "at": at.isoformat(),
        }

    def changed(
        self, from_state: str, to_state: str, at: datetime, reason: str | None = None
    ) -> dict[str, Any]:
        payload = self.created(to_state, at)
        del payload["state"]
        return {**payload, "from_state": from_state, "to_state": to_state, "reason": reason}

    def sibling(self) -> Referral:
        """Another referral under the same referrer, program, university and campaign."""
        return Referral(self.referrer_id, self.program_id, self.university_id, self.campaign_id)


async def deliver(
    rt: Runtime, topic: str, payload: dict[str, Any], event_id: uuid.UUID | None = None
) -> bool:
    """Hand one event to the analytics consumer of its topic, as the worker would; False: a duplicate."""
    consumer = registry.get(CONSUMERS[topic])
    assert consumer is not None
    return await handle_once(rt, consumer, event_id or uuid7(), payload)


async def staff_funnel(client: httpx.AsyncClient, token: str, **params: Any) -> dict[str, Any]:
    r = await client.get(
        "/v1/staff/analytics/funnel", params=params, headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def report(rt: Runtime, university_id: str, referral_id: str, kind: OutcomeKind) -> None:
    async with rt.db.sessionmaker() as session, session.begin():
        result = await apply_partner_outcome(
            session,
            rt,
            OutcomeReport(
                university_id=uuid.UUID(university_id),
                kind=kind,
                occurred_at=datetime.now(UTC),
                external_ref=f"e2e-{uuid.uuid4()}",
                referral_id=uuid.UUID(referral_id),
                fee_amount=45_000_000 if kind is OutcomeKind.enrolled else None,
                fee_currency="INR" if kind is OutcomeKind.enrolled else None,
            ),
            RequestContext(),
        )
    assert result.status == "applied", result


async def lifecycle_events(rt: Runtime, referral_ids: list[str]) -> list[OutboxEvent]:
    async with rt.db.sessionmaker() as session:
        return list(
            (
                await session.scalars(
                    select(OutboxEvent)
                    .where(
                        OutboxEvent.topic.in_(list(CONSUMERS)),
                        OutboxEvent.payload["referral_id"].astext.in_(referral_ids),
                    )
                    .order_by(OutboxEvent.id)
                )
            ).all()
        )
