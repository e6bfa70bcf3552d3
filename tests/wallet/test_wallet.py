import csv
import io
import uuid
from datetime import UTC, datetime, timedelta

from referloop import ledger
from referloop.runtime import Runtime
from referloop.wallet import service
from tests.factories import register_member


async def credit(rt: Runtime, member_id: str, amount: int, currency: str = "INR") -> uuid.UUID:
    async with rt.db.sessionmaker() as session, session.begin():
        posted = await ledger.move(
            session,
            entry_type="adjustment",
            source=ledger.platform_account(ledger.AccountCode.adjustments),
            destination=ledger.member_account(uuid.UUID(member_id)),
            amount=amount,
            currency=currency,
            idempotency_key=f"test-credit:{uuid.uuid4()}",
        )
        return posted.id


async def earn(rt: Runtime, member_id: str, amount: int) -> uuid.UUID:
    async with rt.db.sessionmaker() as session, session.begin():
        result = await ledger.earn_pending(
            session,
            member_id=uuid.UUID(member_id),
            amount=amount,
            currency="INR",
            source=ledger.platform_account(ledger.AccountCode.reward_expense, "test-program"),
            idempotency_key=f"test-earn:{uuid.uuid4()}",
            reference_type="referral",
            reference_id=str(uuid.uuid4()),
        )
        return result.transfer.id


async def test_balances_per_currency(client, runtime):
    m = await register_member(client)
    assert (await client.get("/v1/wallet", headers=m.auth)).json() == {"balances": []}
    await credit(runtime, m.id, 12_345)
    await credit(runtime, m.id, 500, "USD")
    await credit(runtime, m.id, 7, "JPY")
    await earn(runtime, m.id, 1_000)
    balances = {b["currency"]: b for b in (await client.get("/v1/wallet", headers=m.auth)).json()["balances"]}
    assert balances["INR"] == {
        "currency": "INR",
        "exponent": 2,
        "pending": 1_000,
        "available": 12_345,
        "held": 0,
        "total": 13_345,
    }
    assert balances["USD"]["available"] == 500
    # Yen has no minor unit: a client shows 7 as ¥7, not ¥0.07.
    assert (balances["JPY"]["available"], balances["JPY"]["exponent"]) == (7, 0)


async def test_history_filters_paginates_and_hides_others(client, runtime):
    m = await register_member(client)
    other = await register_member(client)
    credits = [await credit(runtime, m.id, 100 * (i + 1)) for i in range(3)]
    earning_entry = await earn(runtime, m.id, 700)
    await credit(runtime, m.id, 50, "USD")
    foreign = await credit(runtime, other.id, 999)

    everything = (await client.get("/v1/wallet/transactions", headers=m.auth)).json()["items"]
    assert len(everything) == 5
    assert str(foreign) not in {t["id"] for t in everything}

    inr = (
        await client.get(
            "/v1/wallet/transactions", params={"currency": "INR", "type": "adjustment"}, headers=m.auth
        )
    ).json()["items"]
    assert [t["id"] for t in inr] == [str(e) for e in reversed(credits)]
    assert [t["available_change"] for t in inr] == [300, 200, 100]

    pending = (
        await client.get("/v1/wallet/transactions", params={"status": "pending"}, headers=m.auth)
    ).json()
    assert [(t["type"], t["pending_change"], t["status"]) for t in pending["items"]] == [
        ("pending.earning", 700, "pending")
    ]
    completed = (
        await client.get("/v1/wallet/transactions", params={"status": "completed"}, headers=m.auth)
    ).json()
    assert len(completed["items"]) == 4
    assert earning_entry  # the earning is a pending transfer, listed through its entry above

    pages, cursor = [], None
    while True:
        page = (
            await client.get(
                "/v1/wallet/transactions",
                params={"limit": 2, **({"cursor": cursor} if cursor else {})},
                headers=m.auth,
            )
        ).json()
        pages.append(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [t["id"] for p in pages for t in p] == [t["id"] for t in everything]

    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    none = await client.get("/v1/wallet/transactions", params={"since": future}, headers=m.auth)
    assert none.json()["items"] == []
    bad = await client.get(
        "/v1/wallet/transactions", params={"since": future, "until": future}, headers=m.auth
    )
    assert bad.status_code == 422
    assert (
        await client.get("/v1/wallet/transactions", params={"cursor": "garbage!"}, headers=m.auth)
    ).status_code == 422


async def test_one_transaction_is_visible_to_its_member_only(client, runtime):
    m = await register_member(client)
    other = await register_member(client)
    entry = await credit(runtime, m.id, 4_200)
    mine = await client.get(f"/v1/wallet/transactions/{entry}", headers=m.auth)
    assert mine.status_code == 200
    assert mine.json()[0]["available_change"] == 4_200
    assert (await client.get(f"/v1/wallet/transactions/{entry}", headers=other.auth)).status_code == 404
    assert (await client.get(f"/v1/wallet/transactions/{uuid.uuid4()}", headers=m.auth)).status_code == 404


async def test_csv_export_streams_every_row(client, runtime):
    m = await register_member(client)
    for i in range(7):
        await credit(runtime, m.id, i + 1)
    r = await client.get("/v1/wallet/transactions.csv", headers=m.auth)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert sorted(int(row["available_change"]) for row in rows) == [1, 2, 3, 4, 5, 6, 7]
    assert {row["status"] for row in rows} == {"completed"}


async def test_a_paused_csv_export_holds_no_database_connection(client, runtime):
    # A client that stops reading suspends the stream between rows; it used to keep a pooled
    # connection of the write pool checked out meanwhile, and a few such exports drained the pool.
    m = await register_member(client)
    await credit(runtime, m.id, 5)
    await credit(runtime, m.id, 6)
    rows = service.export_rows(
        runtime.db.read_sessionmaker,
        uuid.UUID(m.id),
        currency=None,
        types=None,
        status=None,
        since=None,
        until=None,
    )
    first = await anext(rows)
    assert first.available_change in (5, 6)
    assert runtime.db.read_engine.pool.checkedout() == 0
    assert runtime.db.engine.pool.checkedout() == 0
    assert {first.available_change, (await anext(rows)).available_change} == {5, 6}
    await rows.aclose()


async def test_wallet_needs_a_token(client):
    r = await client.get("/v1/wallet")
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"


async def test_a_member_can_dispute_their_own_transaction_only(client, runtime):
    m = await register_member(client)
    other = await register_member(client)
    entry = await credit(runtime, m.id, 100)
    body = {
        "subject_type": "transaction",
        "subject_id": str(entry),
        "title": "Wrong amount",
        "message": "Expected 200",
    }
    mine = await client.post(
        "/v1/disputes", json=body, headers={**m.auth, "Idempotency-Key": str(uuid.uuid4())}
    )
    assert mine.status_code == 201, mine.text
    theirs = await client.post(
        "/v1/disputes", json=body, headers={**other.auth, "Idempotency-Key": str(uuid.uuid4())}
    )
    assert theirs.status_code == 404


async def test_an_entry_in_two_currencies_is_listed_once_per_currency_across_pages(client, runtime):
    m = await register_member(client)
    member, house = (
        ledger.member_account(uuid.UUID(m.id)),
        ledger.platform_account(ledger.AccountCode.adjustments),
    )
    async with runtime.db.sessionmaker() as session, session.begin():
        both = await ledger.post_entry(
            session,
            entry_type="adjustment",
            legs=[
                ledger.Leg(member, 100, "USD"),
                ledger.Leg(house, -100, "USD"),
                ledger.Leg(member, 8_300, "INR"),
                ledger.Leg(house, -8_300, "INR"),
            ],
            idempotency_key=f"test-two-currencies:{uuid.uuid4()}",
        )
    older = await credit(runtime, m.id, 7)

    seen, cursor = [], None
    while True:
        page = (
            await client.get(
                "/v1/wallet/transactions",
                params={"limit": 1, **({"cursor": cursor} if cursor else {})},
                headers=m.auth,
            )
        ).json()
        seen += [(t["id"], t["currency"], t["available_change"]) for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [(str(older), "INR", 7), (str(both.id), "USD", 100), (str(both.id), "INR", 8_300)]
    exported = list(
        csv.DictReader(io.StringIO((await client.get("/v1/wallet/transactions.csv", headers=m.auth)).text))
    )
    assert sorted((r["currency"], r["available_change"]) for r in exported) == [
        ("INR", "7"),
        ("INR", "8300"),
        ("USD", "100"),
    ]


async def test_the_csv_also_gives_each_change_in_major_units_of_its_currency(client, runtime):
    m = await register_member(client)
    for currency in ("INR", "JPY", "KWD"):
        await credit(runtime, m.id, 1_500, currency)
    async with runtime.db.sessionmaker() as session, session.begin():
        await ledger.move(
            session,
            entry_type="adjustment",
            source=ledger.member_account(uuid.UUID(m.id)),
            destination=ledger.platform_account(ledger.AccountCode.adjustments),
            amount=1,
            currency="INR",
            idempotency_key=f"test-debit:{uuid.uuid4()}",
        )
    rows = list(
        csv.DictReader(io.StringIO((await client.get("/v1/wallet/transactions.csv", headers=m.auth)).text))
    )
    assert sorted((r["currency"], r["available_change"], r["available_change_decimal"]) for r in rows) == [
        ("INR", "-1", "-0.01"),
        ("INR", "1500", "15.00"),
        ("JPY", "1500", "1500"),
        ("KWD", "1500", "1.500"),
    ]
    naive = await client.get(
        "/v1/wallet/transactions.csv", params={"since": "2026-01-01T00:00:00"}, headers=m.auth
    )
    assert naive.status_code == 422 and "since" in naive.text
