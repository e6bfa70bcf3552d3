"""Handing a withdrawal to its payout provider, and applying what the provider says about it.

The worker's submission has three steps, so that no crash can pay twice:
1. in a transaction of its own: approved -> processing (committed before any money moves out);
2. `create_payout` with OUR idempotency key (`Withdrawal.provider_key`, derived from the withdrawal
   id and attempt): asking again after any failure finds the payout the first call made;
3. in the consumer's transaction (with its inbox record): save the provider's answer.
A crash between 2 and 3 leaves the withdrawal processing with no provider id, and the event
unhandled: it is delivered again and step 2 runs again with the same key.

Every report (the worker's answer, a webhook, `payouts sync`, staff for the manual provider) goes
through `apply_report`, which applies a provider status only if it outranks the one we hold
(`PayoutStatus.supersedes`): repeated and out-of-order reports change nothing twice.
"""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.config import PayoutProviderName
from referloop.core.db import utcnow
from referloop.core.errors import NotFound
from referloop.core.faults import maybe_crash
from referloop.identity.service.accounts import get_user
from referloop.payouts.methods import service as methods
from referloop.payouts.providers import (
    Beneficiary,
    Destination,
    PayoutRequest,
    PayoutStatus,
    PermanentProviderError,
    ProviderPayout,
    RetryableProviderError,
    build_payout_provider,
)
from referloop.payouts.providers.errors import PayoutProviderError, ProviderAuthenticationFailed
from referloop.payouts.withdrawals.models import Withdrawal, WithdrawalState
from referloop.payouts.withdrawals.service import money
from referloop.payouts.withdrawals.service.transitions import SYSTEM, Actor, lock, transition
from referloop.runtime import Runtime

log = structlog.get_logger(__name__)

# Crash tests: the provider has answered, the answer is not saved yet. `<point>:<withdrawal id>`
# crashes only for that withdrawal.
FAULT_AFTER_PROVIDER_CALL = "payouts.after_provider_call"
ATTEMPT_KEY = "referloop_attempt"
NARRATION = "Referloop payout"
PROVIDER_REFUSED = (
    "The payout provider refused this payout; the amount is back in your available balance. "
    "Check your payout method, or contact support."
)
_DESTINATION: TypeAdapter[Any] = TypeAdapter(Destination)


class CannotPay(Exception):
    """Nothing can be sent for this withdrawal (its method is gone or unusable): it fails."""

    def __init__(self, message: str, code: str = "payout_method_unusable") -> None:
        super().__init__(message)
        self.code = code


async def build_request(session: AsyncSession, rt: Runtime, w: Withdrawal) -> PayoutRequest:
    try:
        method = await methods.get_method(session, w.member_id, w.payout_method_id)
    except NotFound as exc:
        raise CannotPay("The payout method was removed before the payout was sent.") from exc
    except methods.PayoutMethodNotActive as exc:
        # E.g. Stripe restricted the account after the withdrawal was approved. Retrying would wait
        # on the member, not on us: fail it (the amount goes back to available) and say why.
        raise CannotPay(exc.detail) from exc
    if method.usable_from > utcnow():
        # Changed since the withdrawal was asked for (its details are read only now): the new
        # details have not sat out their cool-down, which is what stops a taken-over account from
        # redirecting money at once. Fail it; the member asks again once the method is usable.
        raise CannotPay(
            "The payout method was changed after this withdrawal was requested; the amount is back in "
            f"your available balance. The method can receive payouts from {method.usable_from.isoformat()}.",
            code="payout_method_changed",
        )
    details = methods.decrypt_details(rt, method)
    try:
        destination = _DESTINATION.validate_python(details)
    except ValidationError as exc:
        raise CannotPay(f"The payout method ({method.kind}) cannot receive payouts.") from exc
    user = await get_user(session, w.member_id)
    name = str(details.get("holder_name") or user.display_name)
    return PayoutRequest(
        idempotency_key=w.provider_key,
        reference=str(w.id),
        amount=w.net_amount,
        currency=w.currency,
        destination=destination,
        beneficiary=Beneficiary(
            name=name[:120], reference=str(w.member_id), email=user.email, phone=user.phone
        ),
        narration=NARRATION,
        metadata={ATTEMPT_KEY: str(w.attempt)},
    )


async def submit(
    session: AsyncSession,
    rt: Runtime,
    withdrawal_id: uuid.UUID,
    attempt: int,
    *,
    provider_checked: bool = False,
) -> str:
    """Send one attempt of a withdrawal to its provider (the consumer of `withdrawal_approved`, and
    `payouts sync` for a submission that never got an answer). Returns what happened.

    An attempt already processing was sent before (the worker died after the call, or the call timed
    out or failed with a 5xx), so a payout may exist: it is looked up at the provider first
    (`payouts sync`), and only when there is none (`provider_checked`) is it sent again, or failed
    and the money released on a refusal. Releasing on a guess would pay twice."""
    async with rt.db.sessionmaker() as own, own.begin():
        w = await lock(own, withdrawal_id)
        if w.attempt != attempt:
            return f"skipped: attempt {attempt} was superseded by attempt {w.attempt}"
        sent_before = w.state == WithdrawalState.processing.value
        if w.state == WithdrawalState.approved.value:
            await transition(own, w, WithdrawalState.processing, SYSTEM)
        elif not sent_before or w.provider_payout_id is not None:
            return f"skipped: the withdrawal is {w.state}"
        cannot_pay: CannotPay | None = None
        if not sent_before or provider_checked:
            try:
                request = await build_request(own, rt, w)
            except CannotPay as exc:
                if not sent_before:
                    await _fail(own, w, SYSTEM, code=exc.code, message=str(exc))
                    return "failed: " + str(exc)
                cannot_pay = exc  # sent before: what it moved comes back first (below)
        provider_name, provider_key = w.provider, w.provider_key
    if sent_before and not provider_checked:
        from referloop.payouts.withdrawals.service.sync import sync_one  # it calls back here

        return "looked up first: " + await sync_one(rt, withdrawal_id)
    if cannot_pay is not None:
        return await _abandon(session, rt, withdrawal_id, attempt, provider_name, provider_key, cannot_pay)

    provider = build_payout_provider(rt.settings, provider_name)
    try:
        report = await provider.create_payout(request)
    except (RetryableProviderError, ProviderAuthenticationFailed) as exc:
        # Our credentials or the provider's availability: not the member's fault. Try again later
        # (the outbox backs off) with the same key; `payouts sync` settles one that never answers.
        await note_error(rt, withdrawal_id, exc)
        raise
    except PermanentProviderError as exc:
        if not exc.no_payout_made:
            # A payout may exist (e.g. our key was reused with another body): never release the
            # money on a guess. It stays processing for `payouts sync` or staff to settle.
            await note_error(rt, withdrawal_id, exc)
            log.error("payout_outcome_unknown", withdrawal_id=str(withdrawal_id), error=exc.detail)
            return "unknown: " + exc.detail
        w = await lock(session, withdrawal_id)
        if w.attempt != attempt or w.state != WithdrawalState.processing.value or w.provider_payout_id:
            return f"skipped: the withdrawal is {w.state}"
        # The provider's own words are for staff (they may be about our account, e.g. its balance);
        # the member is told what it means for them.
        w.last_error = f"{exc.code}: {exc.detail}"[:2000]
        await _fail(session, w, SYSTEM, code=exc.provider_code or exc.code, message=PROVIDER_REFUSED)
        return "failed: " + exc.detail
    finally:
        await provider.aclose()

    maybe_crash(rt.settings, FAULT_AFTER_PROVIDER_CALL)
    maybe_crash(rt.settings, f"{FAULT_AFTER_PROVIDER_CALL}:{withdrawal_id}")
    w = await lock(session, withdrawal_id)
    if w.attempt != attempt:
        return "skipped: superseded while the provider answered"
    return await apply_report(session, rt, w, report, SYSTEM)


async def _abandon(
    session: AsyncSession,
    rt: Runtime,
    withdrawal_id: uuid.UUID,
    attempt: int,
    provider_name: str,
    provider_key: str,
    cannot_pay: CannotPay,
) -> str:
    """Fail an attempt sent before that can no longer be paid (its method was removed or changed),
    once the provider has given back whatever the attempt moved (the provider has no payout of it:
    `payouts sync` looked). Refused: it stays processing, for staff."""
    provider = build_payout_provider(rt.settings, provider_name)
    try:
        await provider.reclaim_unsent(
            str(withdrawal_id), metadata={ATTEMPT_KEY: str(attempt)}, idempotency_key=provider_key
        )
    except PermanentProviderError as exc:
        await note_error(rt, withdrawal_id, exc)
        log.error("payout_attempt_not_reclaimed", withdrawal_id=str(withdrawal_id), error=exc.detail)
        return "unknown: " + exc.detail
    finally:
        await provider.aclose()
    w = await lock(session, withdrawal_id)
    if w.attempt != attempt or w.state != WithdrawalState.processing.value or w.provider_payout_id:
        return f"skipped: the withdrawal is {w.state}"
    await _fail(session, w, SYSTEM, code=cannot_pay.code, message=str(cannot_pay))
    return "failed: " + str(cannot_pay)


async def note_error(rt: Runtime, withdrawal_id: uuid.UUID, exc: PayoutProviderError) -> None:
    """Keep the last provider error on the withdrawal for staff (its own transaction: the caller's
    is about to roll back)."""
    async with rt.db.sessionmaker() as own, own.begin():
        await own.execute(
            update(Withdrawal)
            .where(Withdrawal.id == withdrawal_id)
            .values(last_error=f"{exc.code}: {exc.detail}"[:2000])
        )


def attempt_of(report: ProviderPayout) -> int | None:
    """The attempt a provider's payout belongs to, from the metadata we sent with it (RazorpayX
    `notes`, Stripe `metadata`)."""
    raw = report.raw
    for bag in (raw.get("notes"), raw.get("metadata")):
        if isinstance(bag, dict) and str(bag.get(ATTEMPT_KEY, "")).isdigit():
            return int(bag[ATTEMPT_KEY])
    return None


def is_payout_object(rt: Runtime, provider: str, provider_payout_id: str) -> bool:
    """Whether a report is about the object that carries the member's money to them. With Stripe
    Connect payouts that is the connected account's payout (`acct_…/po_…`), not the transfer that
    precedes it (a transfer reaching the account is not the member being paid)."""
    if provider == PayoutProviderName.stripe.value:
        if rt.settings.stripe_connect_payouts:
            return "/po_" in provider_payout_id or provider_payout_id.startswith("po_")
        return provider_payout_id.startswith("tr_")
    return True


async def apply_report(
    session: AsyncSession, rt: Runtime, w: Withdrawal, report: ProviderPayout, actor: Actor
) -> str:
    """Apply a provider's word on the withdrawal's payout; `w` is locked by the caller."""
    if report.provider != w.provider:
        return f"ignored: the withdrawal is paid through {w.provider}, not {report.provider}"
    if report.provider_payout_id != w.provider_payout_id:
        if w.provider_payout_id is not None:
            log.warning(
                "payout_report_for_other_payout",
                withdrawal_id=str(w.id),
                ours=w.provider_payout_id,
                reported=report.provider_payout_id,
                status=report.status.value,
            )
            return "ignored: about another payout of this withdrawal"
        reported_attempt = attempt_of(report)
        if reported_attempt is not None and reported_attempt != w.attempt:
            return f"ignored: about attempt {reported_attempt}, the withdrawal is at {w.attempt}"
        if not is_payout_object(rt, w.provider, report.provider_payout_id):
            return "ignored: not the payout object"
        w.provider_payout_id = report.provider_payout_id

    state = WithdrawalState(w.state)
    if w.provider_status is not None and not report.status.supersedes(PayoutStatus(w.provider_status)):
        await session.flush()
        return f"ignored: {report.status.value} does not supersede {w.provider_status}"
    if (
        report.status.money_returned
        and state in (WithdrawalState.processing, WithdrawalState.paid)
        and not await _reclaimed(rt, w, report)
    ):
        # Its status is not recorded either: the next report of it (or `payouts sync`) tries again.
        await session.flush()
        return "unresolved: the money came back to the member's provider account and stays there"
    w.provider_status = report.status.value
    w.provider_raw_status = report.provider_status[:40]
    if report.fees is not None:
        w.provider_fee = report.fees
    if report.bank_reference:
        w.bank_reference = report.bank_reference[:64]

    if report.status is PayoutStatus.paid:
        if state is WithdrawalState.processing:
            await money.settle_paid(session, w)
            await transition(
                session,
                w,
                WithdrawalState.paid,
                actor,
                details={"provider_payout_id": w.provider_payout_id, "bank_reference": w.bank_reference},
            )
            return "paid"
        if state not in (WithdrawalState.paid, WithdrawalState.reversed):
            # Paid out after we had settled it otherwise (released, cancelled): money went out twice.
            w.last_error = f"paid by {w.provider} ({w.provider_payout_id}) while {state.value}: recover it"
            log.error(
                "payout_paid_after_release",
                withdrawal_id=str(w.id),
                state=state.value,
                provider_payout_id=w.provider_payout_id,
            )
    elif report.status.money_returned:
        w.failure_code = (report.failure_code or report.provider_status)[:64]
        w.failure_message = (report.failure_message or f"The payout was {report.provider_status}.")[:500]
        if state is WithdrawalState.processing:
            await money.release(session, w, report.status.value)
            await transition(
                session,
                w,
                WithdrawalState.failed,
                actor,
                details={"provider_payout_id": w.provider_payout_id, "failure_code": w.failure_code},
            )
            return "failed"
        if state is WithdrawalState.paid:
            await money.recredit_reversal(session, w)
            await transition(
                session,
                w,
                WithdrawalState.reversed,
                actor,
                details={"provider_payout_id": w.provider_payout_id, "failure_code": w.failure_code},
            )
            return "reversed"
    await session.flush()
    return f"recorded: {report.status.value}"


async def _reclaimed(rt: Runtime, w: Withdrawal, report: ProviderPayout) -> bool:
    """Whether the money of a failed or cancelled payout is back on our balance (so the wallet may be
    credited again). A provider that cannot be reached raises: the webhook answers 5xx and comes
    again, or `payouts sync` asks later; nothing was changed. One that refuses leaves the money
    where it is: the withdrawal keeps its state, and `last_error` tells staff what to settle."""
    provider = build_payout_provider(rt.settings, w.provider)
    try:
        await provider.reclaim_returned(report, idempotency_key=w.provider_key, reference=str(w.id))
    except PermanentProviderError as exc:
        w.last_error = f"{exc.provider_code or exc.code}: {exc.detail}"[:2000]
        log.error("payout_money_not_reclaimed", withdrawal_id=str(w.id), error=exc.detail)
        return False
    finally:
        await provider.aclose()
    return True


async def _fail(session: AsyncSession, w: Withdrawal, actor: Actor, *, code: str, message: str) -> None:
    w.failure_code = code[:64]
    w.failure_message = message[:500]
    await money.release(session, w, "failed")
    await transition(session, w, WithdrawalState.failed, actor, details={"failure_code": w.failure_code})
