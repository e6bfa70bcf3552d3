"""Partner API (`/partner/v1`): outcome batches and files, referral look-ups. Authenticated by API
key, rate-limited per key, every call audited (see deps.py)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncGenerator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.formparsers import MultiPartException, MultiPartParser

from referloop.core.deps import ContextDep, RuntimeDep, WriteSession
from referloop.core.errors import problem_responses
from referloop.core.idempotency import (
    REPLAY_HEADER,
    idempotency_key_header,
    request_fingerprint,
    run_idempotent,
)
from referloop.core.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page
from referloop.core.validation import AwareInstant
from referloop.referrals.lifecycle.models import ReferralState
from referloop.referrals.partner.deps import CurrentPartner, note_call
from referloop.referrals.partner.errors import CsvRefused, PayloadTooLarge, UnsupportedMediaType
from referloop.referrals.partner.schemas import (
    MAX_BATCH_ITEMS,
    OutcomeBatch,
    OutcomeBatchResult,
    PartnerMe,
    PartnerReferralDetail,
    PartnerReferralOut,
)
from referloop.referrals.partner.service import lookup
from referloop.referrals.partner.service.csv_files import COLUMNS, parse_outcomes_csv, report_csv
from referloop.referrals.partner.service.keys import PartnerPrincipal
from referloop.referrals.partner.service.outcomes import report_outcomes

router = APIRouter(prefix="/partner/v1", tags=["partner"], responses=problem_responses(401, 429))

IdempotencyKey = Annotated[str, Depends(idempotency_key_header)]
Cursor = Annotated[str | None, Query(max_length=300, pattern=r"^[A-Za-z0-9_-]+$")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
_MULTIPART_OVERHEAD = 64 * 1024


def outcomes_scope(partner: PartnerPrincipal) -> str:
    # Per university, not per key: a batch retried with the rotated key still replays.
    return f"partner-outcomes:{partner.university_id}"


@router.get("/me", response_model=PartnerMe)
async def me(partner: CurrentPartner) -> PartnerMe:
    """The key you are calling with: its university, rate limit and end (once rotated)."""
    return PartnerMe(
        key_id=partner.key_id,
        key_name=partner.key_name,
        university_id=partner.university_id,
        rate_limit=partner.rate_limit,
        expires_at=partner.expires_at,
    )


# GET routes take the write session: CurrentPartner audits every call in the request's transaction.
@router.get("/referrals", response_model=Page[PartnerReferralOut], responses=problem_responses(422))
async def list_referrals(
    request: Request,
    partner: CurrentPartner,
    session: WriteSession,
    state: ReferralState | None = None,
    program_id: Annotated[uuid.UUID | None, Query(description="One of your programs")] = None,
    updated_since: Annotated[
        AwareInstant | None,
        Query(description="Changed at or after (RFC 3339 with a time zone), to sync what changed"),
    ] = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[PartnerReferralOut]:
    """Referrals to your university's programs, most recently changed first. To sync changes, keep
    the `updated_at` of the first item of your last sync and pass it (less a minute, for changes
    still committing then) as `updated_since`; a referral seen twice is harmless. The referee is
    shown as first name and initial only."""
    filters = lookup.PartnerReferralFilters(state=state, program_id=program_id, updated_since=updated_since)
    items, next_cursor = await lookup.list_referrals(session, partner, filters, cursor=cursor, limit=limit)
    note_call(
        request,
        "partner.referrals_listed",
        details={
            "state": state.value if state else None,
            "program_id": str(program_id) if program_id else None,
            "updated_since": updated_since.isoformat() if updated_since else None,
            "items": len(items),
        },
    )
    return Page[PartnerReferralOut](items=items, next_cursor=next_cursor)


@router.get(
    "/referrals/{referral_id}", response_model=PartnerReferralDetail, responses=problem_responses(404, 422)
)
async def get_referral(
    referral_id: uuid.UUID, request: Request, partner: CurrentPartner, session: WriteSession
) -> PartnerReferralDetail:
    """One referral to one of your university's programs, with its timeline (each state change,
    when, and by whom: member, staff, partner or system). Any other id answers 404."""
    result = await lookup.get_referral(session, partner, referral_id)
    note_call(request, "partner.referral_viewed", target_type="referral", target_id=referral_id)
    return result


@router.post(
    "/outcomes",
    response_model=OutcomeBatchResult,
    responses=problem_responses(422),
    openapi_extra={"x-max-items": MAX_BATCH_ITEMS},
)
async def report_outcome_batch(
    body: OutcomeBatch,
    request: Request,
    partner: CurrentPartner,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
    idempotency_key: IdempotencyKey,
) -> JSONResponse:
    """Report up to 1,000 outcomes (application submitted, accepted, rejected, enrolled, enrolment
    cancelled). Each item gets its own result, in order: a bad item never fails the batch. Items are
    matched only to referrals of your university's programs (any other: `not_found`). Outcomes may
    arrive out of order: an older one than what is known is recorded as `stale`. Retrying with the
    same Idempotency-Key and body replays the first answer."""
    summary: dict[str, Any] = {"idempotency_key": idempotency_key, "items": len(body.items)}

    async def handler() -> tuple[int, OutcomeBatchResult]:
        result = await report_outcomes(session, rt, partner, body.items, ctx)
        summary["counts"] = {k: v for k, v in result.counts.items() if v}
        return 200, result

    response = await run_idempotent(
        session,
        scope=outcomes_scope(partner),
        key=idempotency_key,
        fingerprint=request_fingerprint(request, body),
        handler=handler,
    )
    replayed = REPLAY_HEADER in response.headers
    note_call(
        request,
        "partner.outcomes_replayed" if replayed else "partner.outcomes_reported",
        details=summary,
    )
    return response


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The file is larger than {limit} bytes; split it.")
    data = bytearray()
    async for chunk in request.stream():
        data.extend(chunk)
        if len(data) > limit:
            raise PayloadTooLarge(f"The file is larger than {limit} bytes; split it.")
    return bytes(data)


async def _file_bytes(request: Request, max_bytes: int) -> bytes:
    """The CSV, sent as the body (`text/csv`) or as the `file` part of a multipart form."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type in ("text/csv", "application/csv", "text/plain"):
        return await _read_limited(request, max_bytes)
    if media_type == "multipart/form-data":
        raw = await _read_limited(request, max_bytes + _MULTIPART_OVERHEAD)

        async def stream() -> AsyncGenerator[bytes, None]:
            yield raw

        try:
            form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=5).parse()
        except MultiPartException as exc:
            raise CsvRefused(f"The multipart form is not valid: {exc.message}") from exc
        try:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise CsvRefused("Send the CSV as the form's `file` part.")
            data = await upload.read(max_bytes + 1)
        finally:
            await form.close()
        if len(data) > max_bytes:
            raise PayloadTooLarge(f"The file is larger than {max_bytes} bytes; split it.")
        return data
    raise UnsupportedMediaType("Send the file as `text/csv` or as the `file` part of `multipart/form-data`.")


_CSV_DOC = (
    "A CSV file with a header row. Columns: " + ", ".join(COLUMNS) + " (external_id, type and "
    "occurred_at required; an empty cell is no value; fee_amount in minor units)."
)


@router.post(
    "/outcomes.csv",
    response_model=OutcomeBatchResult,
    responses={
        **problem_responses(413, 415, 422),
        200: {
            "description": "The report: one line per row, accepted or refused and why",
            "content": {"text/csv": {"schema": {"type": "string"}}},
        },
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": _CSV_DOC,
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary"}},
                    }
                },
            },
        }
    },
)
async def report_outcome_file(
    request: Request,
    partner: CurrentPartner,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
    idempotency_key: IdempotencyKey,
    format: Annotated[
        Literal["json", "csv"] | None,
        Query(description="Report format; default: CSV if `Accept` asks for text/csv, else JSON"),
    ] = None,
) -> Response:
    """Report outcomes as a CSV file (up to the configured rows and bytes). The answer reports every
    row: accepted (`applied`, `duplicate`, `stale`) or refused (`not_found`, `refused`, `invalid`,
    `error`) and why, as JSON or as CSV. Retrying with the same Idempotency-Key and file replays it."""
    settings = rt.settings
    data = await _file_bytes(request, settings.partner_csv_max_bytes)
    items, lines = parse_outcomes_csv(data, settings.partner_csv_max_rows)
    summary: dict[str, Any] = {
        "idempotency_key": idempotency_key,
        "items": len(items),
        "file_sha256": hashlib.sha256(data).hexdigest(),
    }

    async def handler() -> tuple[int, OutcomeBatchResult]:
        result = await report_outcomes(session, rt, partner, items, ctx, rows=lines)
        summary["counts"] = {k: v for k, v in result.counts.items() if v}
        return 200, result

    fingerprint = hashlib.sha256(b"POST /partner/v1/outcomes.csv\n" + data).digest()
    response = await run_idempotent(
        session, scope=outcomes_scope(partner), key=idempotency_key, fingerprint=fingerprint, handler=handler
    )
    replayed = REPLAY_HEADER in response.headers
    note_call(
        request,
        "partner.outcomes_replayed" if replayed else "partner.outcomes_file_reported",
        details=summary,
    )
    wants_csv = format == "csv" or (format is None and "text/csv" in request.headers.get("accept", ""))
    if not wants_csv:
        return response
    result = OutcomeBatchResult.model_validate_json(bytes(response.body))
    headers = {REPLAY_HEADER: "true"} if replayed else None
    return Response(report_csv(result), media_type="text/csv; charset=utf-8", headers=headers)
