"""Cursor pagination: an opaque cursor over (sort key, id), stable under inserts."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Any, Generic, TypeVar

import orjson
from pydantic import BaseModel, Field
from sqlalchemy import Select, and_, or_, tuple_
from sqlalchemy.orm import InstrumentedAttribute

from referloop.core.errors import InvalidInput
from referloop.core.validation import storable_instant

T = TypeVar("T")

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` to get the next page; null on the last page."
    )


def encode_cursor(values: list[Any]) -> str:
    raw = orjson.dumps([v.isoformat() if isinstance(v, datetime) else str(v) for v in values])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> list[str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = orjson.loads(raw)
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise InvalidInput("The cursor is not one this API returned.") from exc
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InvalidInput("The cursor is not one this API returned.")
    return values


def _last_id(values: list[str]) -> uuid.UUID:
    try:
        return uuid.UUID(values[0])
    except (ValueError, IndexError) as exc:
        raise InvalidInput("The cursor is not one this API returned.") from exc


def paginate_by_id_desc(
    stmt: Select[Any], id_column: InstrumentedAttribute[uuid.UUID], cursor: str | None, limit: int
) -> Select[Any]:
    """Newest first by UUIDv7 id (which sorts by creation time)."""
    if cursor:
        stmt = stmt.where(id_column < _last_id(decode_cursor(cursor)))
    return stmt.order_by(id_column.desc()).limit(limit + 1)


def paginate_by_id_then_desc(
    stmt: Select[Any],
    id_column: InstrumentedAttribute[uuid.UUID],
    tie_column: InstrumentedAttribute[str],
    cursor: str | None,
    limit: int,
) -> Select[Any]:
    """Newest first by id, for rows that share an id (one per id and `tie_column` value): the cursor
    is both, so a page never ends between two rows of one id and skips the second. A cursor of the
    id alone (from `paginate_by_id_desc`) still works."""
    if cursor:
        values = decode_cursor(cursor)
        last = (_last_id(values), values[1] if len(values) > 1 else "")
        stmt = stmt.where(tuple_(id_column, tie_column) < last)
    return stmt.order_by(id_column.desc(), tie_column.desc()).limit(limit + 1)


def paginate_by_time_desc(
    stmt: Select[Any],
    time_column: InstrumentedAttribute[datetime],
    id_column: InstrumentedAttribute[uuid.UUID],
    cursor: str | None,
    limit: int,
) -> Select[Any]:
    if cursor:
        values = decode_cursor(cursor)
        try:
            # Cursors this API returns carry an aware time; a crafted one must not reach the driver,
            # which cannot take a naive time for this column or one outside its years (a 500).
            last_time, last_id = storable_instant(datetime.fromisoformat(values[0])), uuid.UUID(values[1])
            if last_time.tzinfo is None:
                raise ValueError("a cursor's time has a time zone")
        except (ValueError, IndexError) as exc:
            raise InvalidInput("The cursor is not one this API returned.") from exc
        stmt = stmt.where(or_(time_column < last_time, and_(time_column == last_time, id_column < last_id)))
    return stmt.order_by(time_column.desc(), id_column.desc()).limit(limit + 1)


def split_page(rows: list[T], limit: int, key: Any) -> tuple[list[T], str | None]:
    """Rows were fetched with limit + 1; the extra row proves there is a next page."""
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, encode_cursor(key(rows[-1]))
    return rows, None
