"""Times outside what PostgreSQL stores (years 1 to 9999 in UTC) are a 422 naming the field, not a 500."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest
from sqlalchemy import select

from referloop.core.errors import InvalidInput
from referloop.core.pagination import encode_cursor, paginate_by_time_desc
from referloop.core.validation import storable_instant
from referloop.referrals.lifecycle.models import Referral
from tests.factories import register_member

# Year 1 at +04:27 is year 0 in UTC; the last day of 9999 at -05:00 is year 10000.
TOO_EARLY = "0001-01-01T00:00:00+04:27"
TOO_LATE = "9999-12-31T23:00:00-05:00"


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/v1/referrals", "until"),
        ("/v1/referrals", "since"),
        ("/v1/wallet/transactions", "since"),
        ("/v1/withdrawals", "created_to"),
    ],
)
@pytest.mark.parametrize("value", [TOO_EARLY, TOO_LATE])
async def test_an_unstorable_time_in_a_query_is_refused(
    client: httpx.AsyncClient, path: str, name: str, value: str
) -> None:
    member = await register_member(client)
    r = await client.get(path, params={name: value}, headers=member.auth)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in r.json()["errors"]] == [name]
    # The edges themselves are fine.
    r = await client.get(path, params={name: "0001-01-01T00:00:00Z"}, headers=member.auth)
    assert r.status_code == 200, r.text


def test_storable_instant_keeps_every_time_in_range() -> None:
    edge = datetime(1, 1, 1, tzinfo=UTC)
    assert storable_instant(edge) == edge
    assert storable_instant(datetime(9999, 12, 31, 23, 59, tzinfo=UTC)).year == 9999
    with pytest.raises(ValueError, match="years 1 to 9999"):
        storable_instant(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=4))))


# Fixed: parameters must be the same in every xdist worker.
_SOME_ID = "01890000-0000-7000-8000-000000000000"


def _cursor(*values: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        _cursor(TOO_EARLY, _SOME_ID),
        _cursor(TOO_LATE, _SOME_ID),
        _cursor("2026-12-03T10:00:00", _SOME_ID),  # no time zone
        _cursor("yesterday", _SOME_ID),
        _cursor("2026-12-03T10:00:00Z"),
    ],
)
def test_a_crafted_time_cursor_is_refused_before_the_database(cursor: str) -> None:
    # A 422 "not one this API returned" (InvalidInput), where the driver would have failed with a 500.
    with pytest.raises(InvalidInput, match="cursor"):
        paginate_by_time_desc(select(Referral), Referral.updated_at, Referral.id, cursor, 10)


def test_a_time_cursor_this_api_returned_is_taken() -> None:
    cursor = encode_cursor([datetime(2026, 12, 3, 10, tzinfo=UTC), uuid.uuid4()])
    assert "updated_at <" in str(
        paginate_by_time_desc(select(Referral), Referral.updated_at, Referral.id, cursor, 10)
    )
