"""Consumers of withdrawal events: an approved withdrawal is sent to its payout provider."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.outbox.consumers import consumer
from referloop.payouts.withdrawals.models import WithdrawalState
from referloop.payouts.withdrawals.service import payouts
from referloop.payouts.withdrawals.service.transitions import topic
from referloop.runtime import Runtime

SUBMIT_CONSUMER = "payouts.submit"


@consumer(SUBMIT_CONSUMER, topic(WithdrawalState.approved))
async def submit_withdrawal(
    session: AsyncSession, rt: Runtime, event_id: uuid.UUID, payload: dict[str, Any]
) -> None:
    await payouts.submit(session, rt, uuid.UUID(payload["withdrawal_id"]), int(payload["attempt"]))
