"""Outcome reports from partners: each item is validated on its own; the valid ones are applied by
the lifecycle set-wise (a constant number of statements per batch, the same results as one at a
time), and, should that fail, item by item, each in a savepoint of the request's transaction, so one
bad or failing item never undoes the others and never fails the batch. The whole batch still commits (or not) as one, together with its Idempotency-Key
record, so a retried batch replays its first answer instead of applying anything twice (and the
lifecycle is idempotent per item on `(university, external_id, type)` besides)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.context import RequestContext
from referloop.core.errors import AppError, FieldError
from referloop.referrals.lifecycle.service import (
    OutcomeKind,
    OutcomeReport,
    OutcomeResult,
    apply_partner_outcome,
)
from referloop.referrals.lifecycle.service.outcome_batches import apply_partner_outcomes
from referloop.referrals.partner.schemas import (
    ITEM_STATUSES,
    OutcomeBatchResult,
    OutcomeItem,
    OutcomeItemResult,
)
from referloop.referrals.partner.service.keys import PartnerPrincipal
from referloop.runtime import Runtime

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class InvalidRow:
    """A CSV row that cannot even become an item (a wrong number of cells)."""

    reason: str


def _field_errors(exc: ValidationError) -> list[FieldError]:
    # As the API's 422s do, the rejected value is not echoed back.
    return [
        FieldError(
            field=".".join(str(p) for p in err.get("loc", ())),
            location="item",
            message=err.get("msg", ""),
            type=err.get("type", ""),
        )
        for err in exc.errors()
    ]


def _external_id(raw: Any) -> str | None:
    if isinstance(raw, dict):
        value = raw.get("external_id")
        if isinstance(value, str) and value.isprintable():
            return value[:200]
    return None


async def report_outcomes(
    session: AsyncSession,
    rt: Runtime,
    partner: PartnerPrincipal,
    raw_items: Sequence[Any],
    ctx: RequestContext,
    *,
    rows: Sequence[int] | None = None,
) -> OutcomeBatchResult:
    """Validate every item, then apply the valid ones; `rows` (CSV) gives each item's line in the file.

    Applying takes two passes at most. The fast pass applies the whole batch set-wise
    (`apply_partner_outcomes`: a constant number of statements, the same results as item after item)
    inside one savepoint. The lifecycle answers refusals as results rather than raising, so a batch
    that raises is rare; when one does, the batch's savepoint is rolled back and the batch is applied
    again item by item with a savepoint per item, so that only the failing items are lost."""
    results: list[OutcomeItemResult | None] = []
    reports: dict[int, tuple[OutcomeItem, OutcomeReport]] = {}
    for index, raw in enumerate(raw_items):
        checked = _validate(index, rows[index] if rows is not None else None, raw, partner)
        if isinstance(checked, OutcomeItemResult):
            results.append(checked)
        else:
            results.append(None)
            reports[index] = checked
    try:
        async with session.begin_nested():
            applied = await _apply_set(session, rt, partner, reports, rows, ctx)
    except Exception:
        log.warning(
            "partner batch: the set path failed; applying item by item",
            university_id=str(partner.university_id),
            exc_info=True,
        )
        applied = await _apply_all(session, rt, partner, reports, rows, ctx)
    final = [r if r is not None else applied[i] for i, r in enumerate(results)]
    counts: Counter[str] = Counter(r.status for r in final)
    return OutcomeBatchResult(
        received=len(raw_items),
        counts={s: counts.get(s, 0) for s in ITEM_STATUSES},
        items=final,
    )


def _validate(
    index: int, row: int | None, raw: Any, partner: PartnerPrincipal
) -> OutcomeItemResult | tuple[OutcomeItem, OutcomeReport]:
    if isinstance(raw, InvalidRow):
        return OutcomeItemResult(index=index, row=row, external_id=None, status="invalid", reason=raw.reason)
    try:
        item = OutcomeItem.model_validate(raw)
    except ValidationError as exc:
        return OutcomeItemResult(
            index=index,
            row=row,
            external_id=_external_id(raw),
            status="invalid",
            reason="The item has invalid fields.",
            errors=_field_errors(exc),
        )
    report = OutcomeReport(
        university_id=partner.university_id,
        kind=OutcomeKind(item.type),
        occurred_at=item.occurred_at,
        external_ref=item.external_id,
        referral_id=item.referral_id,
        click_id=str(item.click_id) if item.click_id else None,
        email=item.email,
        phone=item.phone,
        program_id=item.program_id,
        fee_amount=item.fee.amount if item.fee else None,
        fee_currency=item.fee.currency if item.fee else None,
    )
    return item, report


def _applied(index: int, row: int | None, item: OutcomeItem, outcome: OutcomeResult) -> OutcomeItemResult:
    return OutcomeItemResult(
        index=index,
        row=row,
        external_id=item.external_id,
        status=outcome.status,
        referral_id=outcome.referral_id,
        state=outcome.state,
        reason=outcome.reason,
    )


async def _apply_set(
    session: AsyncSession,
    rt: Runtime,
    partner: PartnerPrincipal,
    reports: dict[int, tuple[OutcomeItem, OutcomeReport]],
    rows: Sequence[int] | None,
    ctx: RequestContext,
) -> dict[int, OutcomeItemResult]:
    indexes = list(reports)
    outcomes = await apply_partner_outcomes(
        session, rt, [reports[i][1] for i in indexes], ctx, actor_id=partner.key_id
    )
    return {
        index: _applied(index, rows[index] if rows is not None else None, reports[index][0], outcome)
        for index, outcome in zip(indexes, outcomes, strict=True)
    }


async def _apply_all(
    session: AsyncSession,
    rt: Runtime,
    partner: PartnerPrincipal,
    reports: dict[int, tuple[OutcomeItem, OutcomeReport]],
    rows: Sequence[int] | None,
    ctx: RequestContext,
) -> dict[int, OutcomeItemResult]:
    """Item by item, each in its own savepoint (the fallback when the set path fails)."""
    out: dict[int, OutcomeItemResult] = {}
    for index, (item, report) in reports.items():
        row = rows[index] if rows is not None else None
        try:
            async with session.begin_nested():
                outcome = await apply_partner_outcome(session, rt, report, ctx, actor_id=partner.key_id)
        except Exception as exc:
            if isinstance(exc, AppError):
                # A refusal the lifecycle raised rather than returned.
                out[index] = OutcomeItemResult(
                    index=index, row=row, external_id=item.external_id, status="refused", reason=exc.detail
                )
                continue
            # Only this item's savepoint was rolled back; the rest of the batch stands.
            log.exception("partner outcome failed", university_id=str(partner.university_id), index=index)
            out[index] = OutcomeItemResult(
                index=index,
                row=row,
                external_id=item.external_id,
                status="error",
                reason="This item could not be applied; send it again (in a new batch).",
            )
            continue
        out[index] = _applied(index, row, item, outcome)
    return out
