"""The withdrawal's movements in the ledger, all through its internal API.

- requested: `hold` moves the amount from the member's available balance to held (InsufficientFunds
  if it is not there: the guard is the ledger's UPDATE, never a read here);
- paid: the hold is posted to the provider's settlement account; with a fee, to payout clearing,
  then one entry splits it into settlement (what the member received) and fees (ours);
- failed, cancelled, rejected: the hold is released to available;
- reversed (paid, then returned by the bank): one entry re-credits the whole amount, once (its
  idempotency reference is per attempt).
"""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from referloop import ledger
from referloop.ledger import AccountCode, Leg, member_account, platform_account
from referloop.payouts.withdrawals.models import Withdrawal

REFERENCE_TYPE = "withdrawal"
FEES_SCOPE = "withdrawals"


def hold_key(withdrawal_id: uuid.UUID, attempt: int) -> str:
    return f"withdrawal:{withdrawal_id}:hold:{attempt}"


def _settlement(w: Withdrawal) -> ledger.AccountRef:
    return platform_account(AccountCode.settlement, w.provider)


async def hold(
    session: AsyncSession,
    *,
    withdrawal_id: uuid.UUID,
    member_id: uuid.UUID,
    amount: int,
    currency: str,
    attempt: int,
) -> uuid.UUID:
    """Reserve the amount; returns the pending transfer's id. Raises ledger.InsufficientFunds."""
    held = await ledger.hold(
        session,
        member_id=member_id,
        amount=amount,
        currency=currency,
        idempotency_key=hold_key(withdrawal_id, attempt),
        entry_type="withdrawal.hold",
        reference_type=REFERENCE_TYPE,
        reference_id=withdrawal_id,
        metadata={"attempt": attempt},
    )
    return held.transfer.id


async def release(session: AsyncSession, w: Withdrawal, why: str) -> None:
    await ledger.release(
        session, w.hold_transfer_id, metadata={"withdrawal_id": str(w.id), "attempt": w.attempt, "why": why}
    )


async def settle_paid(session: AsyncSession, w: Withdrawal) -> None:
    meta = {"withdrawal_id": str(w.id), "attempt": w.attempt, "provider": w.provider}
    if w.fee == 0:
        await ledger.post_pending(
            session,
            w.hold_transfer_id,
            destination=_settlement(w),
            entry_type="withdrawal.paid",
            metadata=meta,
        )
        return
    clearing = platform_account(AccountCode.payout_clearing, w.provider)
    await ledger.post_pending(
        session, w.hold_transfer_id, destination=clearing, entry_type="withdrawal.paid", metadata=meta
    )
    await ledger.post_entry(
        session,
        entry_type="withdrawal.settled",
        legs=[
            Leg(clearing, -w.amount, w.currency),
            Leg(_settlement(w), w.net_amount, w.currency),
            Leg(platform_account(AccountCode.fees, FEES_SCOPE), w.fee, w.currency),
        ],
        idempotency_key=f"withdrawal:{w.id}:{w.attempt}:settled",
        reference_type=REFERENCE_TYPE,
        reference_id=w.id,
        metadata=meta,
    )


async def recredit_reversal(session: AsyncSession, w: Withdrawal) -> None:
    """The bank returned a paid payout: the member gets the whole amount back (our fee included)."""
    legs = [
        Leg(_settlement(w), -w.net_amount, w.currency),
        Leg(member_account(w.member_id), w.amount, w.currency),
    ]
    if w.fee:
        legs.append(Leg(platform_account(AccountCode.fees, FEES_SCOPE), -w.fee, w.currency))
    await ledger.post_entry(
        session,
        entry_type="withdrawal.reversed",
        legs=legs,
        idempotency_key=f"withdrawal:{w.id}:{w.attempt}:reversal",
        reference_type=REFERENCE_TYPE,
        reference_id=w.id,
        metadata={"withdrawal_id": str(w.id), "attempt": w.attempt, "provider": w.provider},
    )
