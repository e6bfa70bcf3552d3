"""A dispute outcome with an amount: one ledger entry between the member and the platform's
adjustments account, keyed by the dispute so a retried resolution cannot post it twice."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from referloop import ledger
from referloop.core.errors import Conflict, InvalidInput
from referloop.disputes.models import Dispute


async def post_dispute_adjustment(
    session: AsyncSession, dispute: Dispute, amount: int, currency: str
) -> uuid.UUID:
    if not ledger.is_currency(currency):
        raise InvalidInput(f"{currency} is not an ISO 4217 currency.")
    member = ledger.member_account(dispute.member_id)
    platform = ledger.platform_account(ledger.AccountCode.adjustments)
    source, destination = (platform, member) if amount > 0 else (member, platform)
    try:
        entry = await ledger.move(
            session,
            entry_type="dispute.adjustment",
            source=source,
            destination=destination,
            amount=abs(amount),
            currency=currency,
            idempotency_key=f"dispute:{dispute.id}:adjustment",
            reference_type="dispute",
            reference_id=dispute.id,
            metadata={"dispute_id": str(dispute.id)},
        )
    except ledger.InsufficientFunds as exc:
        # A debit never takes a member's available balance below zero (the guard is in SQL).
        raise Conflict("The member's available balance is lower than this debit.") from exc
    return entry.id
