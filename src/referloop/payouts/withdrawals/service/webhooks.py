"""Provider webhooks: verified with the provider's signature, stored in the inbox under a unique
(source, external id), then handled in a second transaction. A delivery that was handled already is
acknowledged and changes nothing; one whose handling failed (we answered 5xx) is handled when the
provider delivers it again."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.db import utcnow
from referloop.core.ids import uuid7
from referloop.payouts.methods import service as methods
from referloop.payouts.providers import WebhookEvent, build_payout_provider
from referloop.payouts.providers.stripe import account_update_from
from referloop.payouts.withdrawals.errors import WithdrawalNotFound
from referloop.payouts.withdrawals.models import WebhookInbox, Withdrawal
from referloop.payouts.withdrawals.service.payouts import apply_report
from referloop.payouts.withdrawals.service.transitions import SYSTEM, lock
from referloop.runtime import Runtime


@dataclass(frozen=True, slots=True)
class Received:
    duplicate: bool
    outcome: str


async def receive(rt: Runtime, source: str, headers: Mapping[str, str], body: bytes) -> Received:
    """Raises WebhookVerificationError (400) for a body whose signature does not verify."""
    provider = build_payout_provider(rt.settings, source)
    try:
        event = provider.verify_webhook(headers, body)
    finally:
        await provider.aclose()

    async with rt.db.sessionmaker() as session, session.begin():
        await session.execute(
            insert(WebhookInbox)
            .values(
                id=uuid7(),
                source=source,
                external_id=event.event_id[:120],
                event_type=event.event_type[:80],
                payload=event.raw,
            )
            .on_conflict_do_nothing(index_elements=["source", "external_id"])
        )

    async with rt.db.sessionmaker() as session, session.begin():
        # The row lock makes two concurrent deliveries of one event handle it once.
        row = await session.scalar(
            select(WebhookInbox)
            .where(WebhookInbox.source == source, WebhookInbox.external_id == event.event_id[:120])
            .with_for_update()
        )
        assert row is not None
        if row.processed_at is not None:
            return Received(duplicate=True, outcome=row.outcome or "")
        outcome, withdrawal_id = await handle(session, rt, event)
        row.processed_at = utcnow()
        row.outcome = outcome[:200]
        row.withdrawal_id = withdrawal_id
        return Received(duplicate=False, outcome=outcome)


async def _find(session: AsyncSession, event: WebhookEvent) -> Withdrawal | None:
    payout = event.payout
    assert payout is not None
    if payout.reference:
        try:
            return await lock(session, uuid.UUID(payout.reference))
        except (ValueError, WithdrawalNotFound):
            pass
    found = await session.scalar(
        select(Withdrawal.id).where(
            Withdrawal.provider == event.provider, Withdrawal.provider_payout_id == payout.provider_payout_id
        )
    )
    return await lock(session, found) if found is not None else None


async def handle(session: AsyncSession, rt: Runtime, event: WebhookEvent) -> tuple[str, uuid.UUID | None]:
    # Stripe Connect onboarding: a member's connected account can (or can no longer) be paid.
    if (account := account_update_from(event)) is not None:
        return await methods.apply_account_update(session, rt, account, event.occurred_at), None
    if event.payout is None:
        return f"ignored: {event.event_type} is about no payout", None
    withdrawal = await _find(session, event)
    if withdrawal is None:
        return f"ignored: no withdrawal for {event.payout.provider_payout_id}", None
    outcome = await apply_report(session, rt, withdrawal, event.payout, SYSTEM)
    return outcome, withdrawal.id
