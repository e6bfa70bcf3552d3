from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from referloop.core.deps import ReadSession, RuntimeDep
from referloop.core.errors import InvalidInput, problem_responses
from referloop.core.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page
from referloop.core.validation import AwareInstant
from referloop.identity.deps import CurrentMember
from referloop.ledger.currencies import get_currency
from referloop.wallet import service
from referloop.wallet.schemas import TransactionOut, TransactionStatus, WalletOut

router = APIRouter(prefix="/v1/wallet", tags=["wallet"], responses=problem_responses(401))

Currency = Annotated[str | None, Query(pattern=r"^[A-Z]{3}$", description="ISO 4217 code")]
Types = Annotated[
    list[str] | None, Query(alias="type", max_length=20, description="Repeat to match several types")
]
Since = Annotated[
    AwareInstant | None, Query(description="From this time (inclusive), RFC 3339 with a time zone")
]
Until = Annotated[
    AwareInstant | None, Query(description="Before this time (exclusive), RFC 3339 with a time zone")
]

CSV_COLUMNS = [
    "id",
    "created_at",
    "type",
    "status",
    "currency",
    "pending_change",
    "available_change",
    "held_change",
    "reference_type",
    "reference_id",
    # The same changes in major units ("15.00" INR, "1.500" KWD, "1500" JPY): the columns above are
    # minor units, whose size differs per currency.
    "pending_change_decimal",
    "available_change_decimal",
    "held_change_decimal",
]


def _check_range(since: datetime | None, until: datetime | None) -> None:
    if since and until and since >= until:
        raise InvalidInput("`since` must be before `until`.")


@router.get("", response_model=WalletOut)
async def get_wallet(principal: CurrentMember, session: ReadSession) -> WalletOut:
    """Your balances per currency, in minor units."""
    return WalletOut(balances=await service.balances(session, principal.user_id))


@router.get("/transactions", response_model=Page[TransactionOut], responses=problem_responses(422))
async def list_transactions(
    principal: CurrentMember,
    session: ReadSession,
    currency: Currency = None,
    types: Types = None,
    status: TransactionStatus | None = None,
    since: Since = None,
    until: Until = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[TransactionOut]:
    """Your money's history, newest first."""
    _check_range(since, until)
    items, next_cursor = await service.transactions(
        session,
        principal.user_id,
        currency=currency,
        types=types,
        status=status,
        since=since,
        until=until,
        cursor=cursor,
        limit=limit,
    )
    return Page[TransactionOut](items=items, next_cursor=next_cursor)


@router.get(
    "/transactions.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "CSV, one row per transaction"}},
)
async def export_transactions(
    principal: CurrentMember,
    rt: RuntimeDep,
    currency: Currency = None,
    types: Types = None,
    status: TransactionStatus | None = None,
    since: Since = None,
    until: Until = None,
) -> StreamingResponse:
    """Stream the same history as CSV (every page), for spreadsheets and accountants."""
    _check_range(since, until)

    async def body() -> AsyncIterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        # The stream outlives the route function (and its request session): it reads through
        # sessions of its own, from the read pool, one per page.
        async for row in service.export_rows(
            rt.db.read_sessionmaker,
            principal.user_id,
            currency=currency,
            types=types,
            status=status,
            since=since,
            until=until,
        ):
            data = row.model_dump(mode="json")
            info = get_currency(row.currency)
            for change in ("pending_change", "available_change", "held_change"):
                data[f"{change}_decimal"] = info.major_text(data[change])
            writer.writerow([data[c] if data[c] is not None else "" for c in CSV_COLUMNS])
            if buffer.tell() > 64_000:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    return StreamingResponse(
        body(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="transactions.csv"'},
    )


@router.get("/transactions/{entry_id}", response_model=list[TransactionOut], responses=problem_responses(404))
async def get_transaction(
    entry_id: uuid.UUID, principal: CurrentMember, session: ReadSession
) -> list[TransactionOut]:
    """One transaction: a line for each currency it moved for you."""
    return await service.transaction(session, principal.user_id, entry_id)
