"""`referloop payouts sync`: ask the provider about every withdrawal processing for longer than
`payout_sync_after_seconds` (a webhook that never came, a worker that died mid-submission)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta

import structlog
from sqlalchemy import select

from referloop.config import PayoutProviderName
from referloop.core.db import utcnow
from referloop.payouts.providers import ProviderPayout, build_payout_provider
from referloop.payouts.providers.errors import PayoutProviderError
from referloop.payouts.withdrawals.models import Withdrawal, WithdrawalState
from referloop.payouts.withdrawals.service.payouts import (
    apply_report,
    attempt_of,
    is_payout_object,
    note_error,
    submit,
)
from referloop.payouts.withdrawals.service.transitions import SYSTEM, lock
from referloop.runtime import Runtime

log = structlog.get_logger(__name__)


@dataclass
class SyncReport:
    checked: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)  # withdrawal id -> what happened
    errors: dict[str, str] = field(default_factory=dict)


async def stuck_withdrawals(rt: Runtime, older_than_seconds: int, limit: int) -> list[uuid.UUID]:
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    async with rt.db.sessionmaker() as session:
        return list(
            (
                await session.scalars(
                    select(Withdrawal.id)
                    .where(
                        Withdrawal.state == WithdrawalState.processing.value,
                        Withdrawal.provider != PayoutProviderName.manual.value,
                        Withdrawal.processing_at < cutoff,
                    )
                    .order_by(Withdrawal.processing_at)
                    .limit(limit)
                )
            ).all()
        )


async def sync_stuck(rt: Runtime, *, older_than_seconds: int | None = None, limit: int = 1000) -> SyncReport:
    older = rt.settings.payout_sync_after_seconds if older_than_seconds is None else older_than_seconds
    report = SyncReport()
    for withdrawal_id in await stuck_withdrawals(rt, older, limit):
        report.checked += 1
        try:
            report.outcomes[str(withdrawal_id)] = await sync_one(rt, withdrawal_id)
        except PayoutProviderError as exc:
            await note_error(rt, withdrawal_id, exc)
            report.errors[str(withdrawal_id)] = f"{exc.code}: {exc.detail}"
            log.warning("payout_sync_failed", withdrawal_id=str(withdrawal_id), error=exc.detail)
    return report


def _pick(candidates: list[ProviderPayout]) -> ProviderPayout | None:
    # One attempt has one payout; should there be more, the one furthest along tells the truth.
    return max(candidates, key=lambda p: p.status.rank, default=None)


async def sync_one(rt: Runtime, withdrawal_id: uuid.UUID) -> str:
    async with rt.db.sessionmaker() as session:
        w = await session.get(Withdrawal, withdrawal_id)
        if w is None or w.state != WithdrawalState.processing.value:
            return "skipped: no longer processing"
        provider_name, payout_id, attempt = w.provider, w.provider_payout_id, w.attempt

    provider = build_payout_provider(rt.settings, provider_name)
    try:
        if payout_id is not None:
            found: ProviderPayout | None = await provider.get_payout(payout_id)
        else:
            # Never saved: the worker died after the provider call, or the call never reached it.
            # Look the payout up by our reference (idempotency keys expire), rather than resend.
            found = _pick(
                [
                    p
                    for p in await provider.find_payouts(str(withdrawal_id))
                    if attempt_of(p) in (None, attempt)
                    and is_payout_object(rt, provider_name, p.provider_payout_id)
                ]
            )
    finally:
        await provider.aclose()

    if found is None:
        # Nothing at the provider for this attempt: send it (same key, so still at most one payout).
        async with rt.db.sessionmaker() as session, session.begin():
            return "submitted: " + await submit(session, rt, withdrawal_id, attempt, provider_checked=True)
    async with rt.db.sessionmaker() as session, session.begin():
        w = await lock(session, withdrawal_id)
        if w.attempt != attempt:
            return "skipped: retried meanwhile"
        w.synced_at = utcnow()
        return await apply_report(session, rt, w, found, SYSTEM)
