"""Outcome reports from partners: each item is validated on its own and applied by the lifecycle in a
savepoint of the request's transaction, so one bad or failing item never undoes the others and never
fails the batch. The whole batch still commits (or not) as one, together with its Idempotency-Key
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
    """Apply each item; `rows` (CSV) gives each item's line in the file for the report."""
    from referloop.referrals.lifecycle.service import OutcomeKind, OutcomeReport, apply_partner_outcome

    results: list[OutcomeItemResult] = []
    for index, raw in enumerate(raw_items):
        row = rows[index] if rows is not None else None
        if isinstance(raw, InvalidRow):
            results.append(
                OutcomeItemResult(index=index, row=row, external_id=None, status="invalid", reason=raw.reason)
            )
            continue
        try:
            item = OutcomeItem.model_validate(raw)
        except ValidationError as exc:
            results.append(
                OutcomeItemResult(
                    index=index,
                    row=row,
                    external_id=_external_id(raw),
                    status="invalid",
                    reason="The item has invalid fields.",
                    errors=_field_errors(exc),
                )
            )
            continue
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
        try:
            async with session.begin_nested():
                outcome = await apply_partner_outcome(session, rt, report, ctx)
        except AppError as exc:
            # A refusal the lifecycle raised rather than returned (an illegal transition...).
            results.append(
                OutcomeItemResult(
                    index=index, row=row, external_id=item.external_id, status="refused", reason=exc.detail
                )
            )
            continue
        except Exception:
            # Only this item's savepoint was rolled back; the rest of the batch stands.
            log.exception("partner outcome failed", university_id=str(partner.university_id), index=index)
            results.append(
                OutcomeItemResult(
                    index=index,
                    row=row,
                    external_id=item.external_id,
                    status="error",
                    reason="This item could not be applied; send it again (in a new batch).",
                )
            )
            continue
        results.append(
            OutcomeItemResult(
                index=index,
                row=row,
                external_id=item.external_id,
                status=outcome.status,
                referral_id=outcome.referral_id,
                state=outcome.state,
                reason=outcome.reason,
            )
        )
    counts: Counter[str] = Counter(r.status for r in results)
    return OutcomeBatchResult(
        received=len(raw_items),
        counts={s: counts.get(s, 0) for s in ITEM_STATUSES},
        items=results,
    )
