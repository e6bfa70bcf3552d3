"""Journal entries: balanced postings, guarded balances, idempotency, reversals."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from referloop import ledger
from referloop.ledger import AccountCode, Leg, member_account, platform_account
from referloop.ledger.models import JournalEntry, Posting
from referloop.runtime import Runtime
from tests.ledger.conftest import fund, make_member, make_members, program_expense


async def _entry_count(rt: Runtime, key: str) -> int:
    async with rt.db.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).where(JournalEntry.idempotency_key == key)) or 0)


class TestPostEntry:
    async def test_reward_moves_money_from_program_expense_to_member(
        self, runtime: Runtime, unique: str
    ) -> None:
        member = await make_member(runtime)
        expense = program_expense(unique)
        async with runtime.db.sessionmaker() as session, session.begin():
            posted = await ledger.move(
                session,
                entry_type="referral.reward",
                source=expense,
                destination=member_account(member),
                amount=12345,
                currency="INR",
                idempotency_key=f"reward:{unique}",
                reference_type="referral",
                reference_id=unique,
                metadata={"program": unique},
            )
        assert not posted.replayed
        async with runtime.db.sessionmaker() as session:
            balances = await ledger.balances_for(session, member)
            assert balances == [ledger.MemberBalance("INR", pending=0, available=12345, held=0)]
            assert (
                await ledger.platform_balance(session, AccountCode.reward_expense, "INR", f"program-{unique}")
                == -12345
            )
            entry = await ledger.get_entry(session, posted.id)
        assert entry.type == "referral.reward"
        assert (entry.reference_type, entry.reference_id) == ("referral", unique)
        assert entry.metadata == {"program": unique}
        assert sorted(p.amount for p in entry.postings) == [-12345, 12345]
        assert {p.account for p in entry.postings} == {f"member:{member}", f"reward_expense:program-{unique}"}

    async def test_entry_as_first_statement_is_rolled_back_with_the_caller(
        self, runtime: Runtime, unique: str
    ) -> None:
        # The entry runs on the driver connection: it must be inside the session's transaction even
        # when it is the transaction's first statement (SQLAlchemy sends BEGIN lazily).
        a, b = await make_members(runtime, 2)
        await fund(runtime, a, 1000, "INR")
        await fund(runtime, b, 1000, "INR")  # both accounts exist: the entry is one statement

        async with runtime.db.sessionmaker() as session:
            await session.begin()
            await ledger.move(
                session,
                entry_type="test.first",
                source=member_account(a),
                destination=member_account(b),
                amount=100,
                currency="INR",
                idempotency_key=f"first:{unique}",
            )
            await session.rollback()  # the caller fails after the entry
        assert await _entry_count(runtime, f"first:{unique}") == 0
        async with runtime.db.sessionmaker() as session:
            assert await ledger.balances_for(session, a) == [
                ledger.MemberBalance("INR", pending=0, available=1000, held=0)
            ]

    async def test_entry_must_balance_per_currency(self, runtime: Runtime, unique: str) -> None:
        a, b = await make_members(runtime, 2)
        await fund(runtime, a, 1000, "INR")
        await fund(runtime, a, 1000, "USD")
        # The amounts sum to zero overall, but not per currency: no implicit conversion.
        async with runtime.db.sessionmaker() as session, session.begin():
            with pytest.raises(ledger.UnbalancedEntry):
                await ledger.post_entry(
                    session,
                    entry_type="test.swap",
                    idempotency_key=f"swap:{unique}",
                    legs=[Leg(member_account(a), -100, "INR"), Leg(member_account(b), 100, "USD")],
                )
            with pytest.raises(ledger.UnbalancedEntry):
                await ledger.post_entry(
                    session,
                    entry_type="test.leak",
                    idempotency_key=f"leak:{unique}",
                    legs=[Leg(member_account(a), -100, "INR"), Leg(member_account(b), 99, "INR")],
                )
        assert await _entry_count(runtime, f"swap:{unique}") == 0
        async with runtime.db.sessionmaker() as session:
            assert await ledger.balances_for(session, b) == []

    async def test_multi_currency_entry_balanced_per_currency(self, runtime: Runtime, unique: str) -> None:
        a, b = await make_members(runtime, 2)
        await fund(runtime, a, 1000, "INR")
        await fund(runtime, a, 1000, "JPY")
        async with runtime.db.sessionmaker() as session, session.begin():
            await ledger.post_entry(
                session,
                entry_type="test.gift",
                idempotency_key=f"gift:{unique}",
                legs=[
                    Leg(member_account(a), -100, "INR"),
                    Leg(member_account(b), 100, "INR"),
                    Leg(member_account(a), -7, "JPY"),
                    Leg(member_account(b), 7, "JPY"),
                ],
            )
        async with runtime.db.sessionmaker() as session:
            assert [(x.currency, x.available) for x in await ledger.balances_for(session, b)] == [
                ("INR", 100),
                ("JPY", 7),
            ]

    @pytest.mark.parametrize("currency", ["XAU", "ABC", "inr", ""])
    async def test_unknown_currency_refused(self, runtime: Runtime, unique: str, currency: str) -> None:
        member = await make_member(runtime)
        async with runtime.db.sessionmaker() as session, session.begin():
            with pytest.raises(ledger.UnknownCurrency):
                await ledger.move(
                    session,
                    entry_type="test.fund",
                    source=program_expense(unique),
                    destination=member_account(member),
                    amount=1,
                    currency=currency,
                    idempotency_key=f"cur:{unique}",
                )
        assert await _entry_count(runtime, f"cur:{unique}") == 0

    @pytest.mark.parametrize("amount", [0, 1.5, True, 10**16])
    async def test_bad_amounts_refused(self, runtime: Runtime, unique: str, amount: object) -> None:
        member = await make_member(runtime)
        async with runtime.db.sessionmaker() as session, session.begin():
            with pytest.raises(ledger.InvalidPosting):
                await ledger.post_entry(
                    session,
                    entry_type="test.bad",
                    idempotency_key=f"bad:{unique}",
                    legs=[
                        Leg(program_expense(unique), -amount, "INR"),  # type: ignore[operator]
                        Leg(member_account(member), amount, "INR"),
                    ],  # type: ignore[arg-type]
                )
        assert await _entry_count(runtime, f"bad:{unique}") == 0

    async def test_insufficient_funds_changes_nothing_and_leaves_the_transaction_usable(
        self, runtime: Runtime, unique: str
    ) -> None:
        a, b = await make_members(runtime, 2)
        await fund(runtime, a, 500)
        async with runtime.db.sessionmaker() as session, session.begin():
            with pytest.raises(ledger.InsufficientFunds):
                await ledger.move(
                    session,
                    entry_type="test.pay",
                    source=member_account(a),
                    destination=member_account(b),
                    amount=501,
                    currency="INR",
                    idempotency_key=f"too-much:{unique}",
                )
            # Same transaction: a smaller movement still goes through, and commits alone.
            await ledger.move(
                session,
                entry_type="test.pay",
                source=member_account(a),
                destination=member_account(b),
                amount=200,
                currency="INR",
                idempotency_key=f"ok:{unique}",
            )
        assert await _entry_count(runtime, f"too-much:{unique}") == 0
        async with runtime.db.sessionmaker() as session:
            assert (await ledger.balance_of(session, a, "INR")).available == 300
            assert (await ledger.balance_of(session, b, "INR")).available == 200
            # The refused entry wrote no posting.
            count = await session.scalar(
                select(func.count()).select_from(Posting).where(Posting.member_id == b)
            )
            assert count == 1


class TestIdempotency:
    async def test_same_reference_same_body_returns_the_first_entry(
        self, runtime: Runtime, unique: str
    ) -> None:
        member = await make_member(runtime)
        kwargs = dict(
            entry_type="referral.reward",
            source=program_expense(unique),
            destination=member_account(member),
            amount=700,
            currency="INR",
            idempotency_key=f"once:{unique}",
            metadata={"n": 1},
        )
        async with runtime.db.sessionmaker() as session, session.begin():
            first = await ledger.move(session, **kwargs)  # type: ignore[arg-type]
        async with runtime.db.sessionmaker() as session, session.begin():
            again = await ledger.move(session, **kwargs)  # type: ignore[arg-type]
        assert again.replayed and again.id == first.id and again.created_at == first.created_at
        assert await _entry_count(runtime, f"once:{unique}") == 1
        async with runtime.db.sessionmaker() as session:
            assert (await ledger.balance_of(session, member, "INR")).available == 700

    @pytest.mark.parametrize(
        "change",
        [{"amount": 701}, {"metadata": {"n": 2}}, {"entry_type": "referral.bonus"}, {"currency": "USD"}],
    )
    async def test_same_reference_other_body_is_refused_without_effect(
        self, runtime: Runtime, unique: str, change: dict[str, object]
    ) -> None:
        member = await make_member(runtime)
        kwargs: dict[str, object] = dict(
            entry_type="referral.reward",
            source=program_expense(unique),
            destination=member_account(member),
            amount=700,
            currency="INR",
            idempotency_key=f"once:{unique}",
            metadata={"n": 1},
        )
        async with runtime.db.sessionmaker() as session, session.begin():
            first = await ledger.move(session, **kwargs)  # type: ignore[arg-type]
        async with runtime.db.sessionmaker() as session, session.begin():
            with pytest.raises(ledger.IdempotencyConflict) as exc:
                await ledger.move(session, **{**kwargs, **change})  # type: ignore[arg-type]
        assert exc.value.status_code == 409
        assert exc.value.extra["entry_id"] == str(first.id)
        assert await _entry_count(runtime, f"once:{unique}") == 1
        async with runtime.db.sessionmaker() as session:
            assert await ledger.balances_for(session, member) == [ledger.MemberBalance("INR", 0, 700, 0)]

    async def test_replay_wins_over_a_balance_spent_since(self, runtime: Runtime, unique: str) -> None:
        a, b = await make_members(runtime, 2)
        await fund(runtime, a, 100)
        kwargs = dict(
            entry_type="test.pay",
            source=member_account(a),
            destination=member_account(b),
            amount=100,
            currency="INR",
            idempotency_key=f"pay:{unique}",
        )
        async with runtime.db.sessionmaker() as session, session.begin():
            first = await ledger.move(session, **kwargs)  # type: ignore[arg-type]
        # a's balance is now 0: repeating the request answers the first result, not "insufficient".
        async with runtime.db.sessionmaker() as session, session.begin():
            assert (await ledger.move(session, **kwargs)).id == first.id  # type: ignore[arg-type]


class TestReversal:
    async def test_reversal_undoes_an_entry_once(self, runtime: Runtime, unique: str) -> None:
        member = await make_member(runtime)
        async with runtime.db.sessionmaker() as session, session.begin():
            posted = await ledger.move(
                session,
                entry_type="referral.reward",
                source=program_expense(unique),
                destination=member_account(member),
                amount=900,
                currency="INR",
                idempotency_key=f"r:{unique}",
            )
        async with runtime.db.sessionmaker() as session, session.begin():
            reversal = await ledger.reverse_entry(session, posted.id, reason="referral was fraudulent")
        async with runtime.db.sessionmaker() as session, session.begin():
            again = await ledger.reverse_entry(session, posted.id, reason="referral was fraudulent")
            assert again.replayed and again.id == reversal.id
            with pytest.raises(ledger.EntryNotReversible):
                await ledger.reverse_entry(session, posted.id, reason="another reason")
            with pytest.raises(ledger.EntryNotReversible):
                await ledger.reverse_entry(session, reversal.id, reason="undo the undo")
        async with runtime.db.sessionmaker() as session:
            assert (await ledger.balance_of(session, member, "INR")).available == 0
            assert (
                await ledger.platform_balance(session, AccountCode.reward_expense, "INR", f"program-{unique}")
                == 0
            )
            view = await ledger.get_entry(session, reversal.id)
        assert view.reverses_entry_id == posted.id and view.type == "ledger.reversal"
        assert view.metadata["reason"] == "referral was fraudulent"

    async def test_reversal_refused_when_member_already_spent_it(self, runtime: Runtime, unique: str) -> None:
        a, b = await make_members(runtime, 2)
        async with runtime.db.sessionmaker() as session, session.begin():
            posted = await ledger.move(
                session,
                entry_type="referral.reward",
                source=program_expense(unique),
                destination=member_account(a),
                amount=900,
                currency="INR",
                idempotency_key=f"r:{unique}",
            )
            await ledger.move(
                session,
                entry_type="test.pay",
                source=member_account(a),
                destination=member_account(b),
                amount=500,
                currency="INR",
                idempotency_key=f"spend:{unique}",
            )
        async with runtime.db.sessionmaker() as session, session.begin():
            with pytest.raises(ledger.InsufficientFunds):
                await ledger.reverse_entry(session, posted.id, reason="clawback")
        async with runtime.db.sessionmaker() as session:
            assert (await ledger.balance_of(session, a, "INR")).available == 400

    async def test_unknown_entry(self, runtime: Runtime) -> None:
        async with runtime.db.sessionmaker() as session:
            with pytest.raises(ledger.EntryNotFound):
                await ledger.reverse_entry(session, uuid.uuid4(), reason="x")


class TestHistory:
    async def test_member_history_newest_first_with_filters(self, runtime: Runtime, unique: str) -> None:
        member = await make_member(runtime)
        async with runtime.db.sessionmaker() as session, session.begin():
            for i in range(5):
                await ledger.move(
                    session,
                    entry_type="referral.reward" if i % 2 == 0 else "game.prize",
                    source=program_expense(unique)
                    if i % 2 == 0
                    else platform_account(AccountCode.game_prizes),
                    destination=member_account(member),
                    amount=100 + i,
                    currency="INR",
                    idempotency_key=f"h{i}:{unique}",
                )
        async with runtime.db.sessionmaker() as session:
            page1, cursor = await ledger.list_member_entries(session, member, limit=3)
            page2, end = await ledger.list_member_entries(session, member, limit=3, cursor=cursor)
            games, _ = await ledger.list_member_entries(session, member, types=["game.prize"])
        assert [e.available for e in page1 + page2] == [104, 103, 102, 101, 100]
        assert end is None
        assert [e.available for e in games] == [103, 101]


async def test_the_ledgers_own_idempotency_references_are_reserved(runtime: Runtime, unique: str) -> None:
    member = await make_member(runtime)
    async with runtime.db.sessionmaker() as session, session.begin():
        with pytest.raises(ledger.InvalidPosting):
            await ledger.move(
                session,
                entry_type="test.fund",
                source=program_expense(unique),
                destination=member_account(member),
                amount=1,
                currency="INR",
                idempotency_key=f"ledger.pending:{uuid.uuid4()}:final",
            )
        with pytest.raises(ledger.InvalidPosting):
            await ledger.earn_pending(
                session,
                member_id=member,
                amount=1,
                currency="INR",
                source=program_expense(unique),
                idempotency_key="ledger.reversal:x",
            )
    async with runtime.db.sessionmaker() as session:
        assert await ledger.balances_for(session, member) == []


async def test_history_status_filter(runtime: Runtime, unique: str) -> None:
    member = await make_member(runtime)
    await fund(runtime, member, 100)
    async with runtime.db.sessionmaker() as session, session.begin():
        await ledger.hold(session, member_id=member, amount=30, currency="INR", idempotency_key=f"h:{unique}")
        await ledger.earn_pending(
            session,
            member_id=member,
            amount=5,
            currency="INR",
            source=program_expense(unique),
            idempotency_key=f"e:{unique}",
        )
    async with runtime.db.sessionmaker() as session:
        awaiting, _ = await ledger.list_member_entries(session, member, status="pending")
        done, _ = await ledger.list_member_entries(session, member, status="completed")
    assert [e.type for e in awaiting] == ["pending.earning", "pending.hold"]
    assert [e.type for e in done] == ["test.fund"]
