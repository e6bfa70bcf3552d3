"""Two-phase amounts: earnings and holds, posted (fully or partly) or voided exactly once, expiry."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from referloop import ledger
from referloop.core.db import utcnow
from referloop.ledger import AccountCode, PendingStatus, platform_account
from referloop.runtime import Runtime
from tests.ledger.conftest import fund, make_member, program_expense


async def _balance(rt: Runtime, member: uuid.UUID, currency: str = "INR") -> tuple[int, int, int]:
    async with rt.db.sessionmaker() as session:
        b = await ledger.balance_of(session, member, currency)
    return b.pending, b.available, b.held


async def _expense(rt: Runtime, unique: str) -> int:
    async with rt.db.sessionmaker() as session:
        return await ledger.platform_balance(session, AccountCode.reward_expense, "INR", f"program-{unique}")


async def _earn(rt: Runtime, member: uuid.UUID, unique: str, amount: int = 1000, **kw: object) -> uuid.UUID:
    async with rt.db.sessionmaker() as session, session.begin():
        result = await ledger.earn_pending(
            session,
            member_id=member,
            amount=amount,
            currency="INR",
            source=program_expense(unique),
            idempotency_key=f"earn:{unique}:{uuid.uuid4()}",
            reference_type="referral",
            reference_id=unique,
            **kw,  # type: ignore[arg-type]
        )
    return result.transfer.id


class TestEarnings:
    async def test_pending_then_posted_into_available(self, runtime: Runtime, unique: str) -> None:
        member = await make_member(runtime)
        transfer = await _earn(runtime, member, unique)
        assert await _balance(runtime, member) == (1000, 0, 0)
        assert await _expense(runtime, unique) == -1000
        async with runtime.db.sessionmaker() as session, session.begin():
            result = await ledger.post_pending(session, transfer)
        assert result.transfer.status == PendingStatus.posted and result.transfer.posted_amount == 1000
        assert await _balance(runtime, member) == (0, 1000, 0)
        assert await _expense(runtime, unique) == -1000

    async def test_partial_post_returns_the_rest_to_the_source(self, runtime: Runtime, unique: str) -> None:
        member = await make_member(runtime)
        transfer = await _earn(runtime, member, unique)
        async with runtime.db.sessionmaker() as session, session.begin():
            await ledger.post_pending(session, transfer, amount=600)
        assert await _balance(runtime, member) == (0, 600, 0)
        assert await _expense(runtime, unique) == -600

    async def test_post_above_pending_refused_without_effect(self, runtime: Runtime, unique: str) -> None:
        member = await make_member(runtime)
        transfer = await _earn(runtime, member, unique)
        async with runtime.db.sessionmaker() as session, session.begin():
            with pytest.raises(ledger.AmountAbovePending):
                await ledger.post_pending(session, transfer, amount=1001)
        async with runtime.db.sessionmaker() as session:
            assert (await ledger.get_pending(session, transfer)).status == PendingStatus.pending
        assert await _balance(runtime, member) == (1000, 0, 0)

    async def test_void_returns_everything(self, runtime: Runtime, unique: str) -> None:
        member = await make_member(runtime)
        transfer = await _earn(runtime, member, unique)
        async with runtime.db.sessionmaker() as session, session.begin():
            await ledger.void_pending(session, transfer)
        assert await _balance(runtime, member) == (0, 0, 0)
        assert await _expense(runtime, unique) == 0

    async def test_exactly_once_repeat_answers_first_result_other_action_refused(
        self, runtime: Runtime, unique: str
    ) -> None:
        member = await make_member(runtime)
        transfer = await _earn(runtime, member, unique)
        async with runtime.db.sessionmaker() as session, session.begin():
            first = await ledger.post_pending(session, transfer, amount=400)
        async with runtime.db.sessionmaker() as session, session.begin():
            again = await ledger.post_pending(session, transfer, amount=400)
            assert again.replayed and again.entry.id == first.entry.id
            with pytest.raises(ledger.PendingTransferFinal):
                await ledger.post_pending(session, transfer, amount=500)
            with pytest.raises(ledger.PendingTransferFinal):
                await ledger.void_pending(session, transfer)
        assert await _balance(runtime, member) == (0, 400, 0)

    async def test_creation_is_idempotent(self, runtime: Runtime, unique: str) -> None:
        member = await make_member(runtime)
        kwargs = dict(
            member_id=member,
            amount=250,
            currency="INR",
            source=program_expense(unique),
            idempotency_key=f"earn:{unique}",
        )
        async with runtime.db.sessionmaker() as session, session.begin():
            first = await ledger.earn_pending(session, **kwargs)  # type: ignore[arg-type]
        async with runtime.db.sessionmaker() as session, session.begin():
            again = await ledger.earn_pending(session, **kwargs)  # type: ignore[arg-type]
            assert again.replayed and again.transfer.id == first.transfer.id
            with pytest.raises(ledger.IdempotencyConflict):
                await ledger.earn_pending(session, **{**kwargs, "amount": 251})  # type: ignore[arg-type]
            with pytest.raises(ledger.IdempotencyConflict):
                await ledger.earn_pending(session, **kwargs, expires_at=utcnow())  # type: ignore[arg-type]
        assert await _balance(runtime, member) == (250, 0, 0)

    async def test_unknown_transfer(self, runtime: Runtime) -> None:
        async with runtime.db.sessionmaker() as session:
            with pytest.raises(ledger.PendingTransferNotFound):
                await ledger.post_pending(session, uuid.uuid4())


class TestHolds:
    async def test_hold_then_post_to_payout_clearing(self, runtime: Runtime, unique: str) -> None:
        member = await make_member(runtime)
        await fund(runtime, member, 1000)
        clearing = platform_account(AccountCode.payout_clearing, f"test-{unique}")
        async with runtime.db.sessionmaker() as session, session.begin():
            held = await ledger.hold(
                session,
                member_id=member,
                amount=700,
                currency="INR",
                idempotency_key=f"w:{unique}:hold",
                reference_type="withdrawal",
                reference_id=unique,
            )
        assert await _balance(runtime, member) == (0, 300, 700)
        async with runtime.db.sessionmaker() as session, session.begin():
            await ledger.post_pending(session, held.transfer.id, destination=clearing)
        assert await _balance(runtime, member) == (0, 300, 0)
        async with runtime.db.sessionmaker() as session:
            assert (
                await ledger.platform_balance(session, AccountCode.payout_clearing, "INR", f"test-{unique}")
                == 700
            )
            entries, _ = await ledger.list_member_entries(session, member)
        assert [(e.type, e.available, e.held) for e in entries] == [
            ("pending.posted", 0, -700),
            ("pending.hold", -700, 700),
            ("test.fund", 1000, 0),
        ]
        assert entries[0].reference_id == unique

    async def test_a_repeated_post_is_a_replay_only_to_the_same_destination(
        self, runtime: Runtime, unique: str
    ) -> None:
        member = await make_member(runtime)
        await fund(runtime, member, 1000)
        clearing = platform_account(AccountCode.payout_clearing, f"test-{unique}")
        settlement = platform_account(AccountCode.settlement, f"test-{unique}")
        async with runtime.db.sessionmaker() as session, session.begin():
            held = await ledger.hold(
                session, member_id=member, amount=700, currency="INR", idempotency_key=f"w:{unique}:hold"
            )
        async with runtime.db.sessionmaker() as session, session.begin():
            first = await ledger.post_pending(session, held.transfer.id, destination=clearing)
        async with runtime.db.sessionmaker() as session, session.begin():
            again = await ledger.post_pending(session, held.transfer.id, destination=clearing)
        assert again.entry.replayed and again.entry.id == first.entry.id
        async with runtime.db.sessionmaker() as session, session.begin():
            with pytest.raises(ledger.PendingTransferFinal):
                await ledger.post_pending(session, held.transfer.id, destination=settlement)
        async with runtime.db.sessionmaker() as session:
            assert (
                await ledger.platform_balance(session, AccountCode.settlement, "INR", f"test-{unique}") == 0
            )

    async def test_hold_above_available_refused(self, runtime: Runtime, unique: str) -> None:
        member = await make_member(runtime)
        await fund(runtime, member, 100)
        async with runtime.db.sessionmaker() as session, session.begin():
            with pytest.raises(ledger.InsufficientFunds):
                await ledger.hold(
                    session, member_id=member, amount=101, currency="INR", idempotency_key=f"w:{unique}"
                )
        assert await _balance(runtime, member) == (0, 100, 0)

    async def test_release_gives_the_hold_back_and_partial_post_releases_the_rest(
        self, runtime: Runtime, unique: str
    ) -> None:
        member = await make_member(runtime)
        await fund(runtime, member, 1000)
        async with runtime.db.sessionmaker() as session, session.begin():
            a = await ledger.hold(
                session, member_id=member, amount=300, currency="INR", idempotency_key=f"a:{unique}"
            )
            b = await ledger.hold(
                session, member_id=member, amount=500, currency="INR", idempotency_key=f"b:{unique}"
            )
        assert await _balance(runtime, member) == (0, 200, 800)
        async with runtime.db.sessionmaker() as session, session.begin():
            await ledger.release(session, a.transfer.id)
            fee = platform_account(AccountCode.fees, f"test-{unique}")
            await ledger.post_pending(session, b.transfer.id, amount=20, destination=fee)
        assert await _balance(runtime, member) == (0, 980, 0)
        async with runtime.db.sessionmaker() as session:
            assert (await ledger.get_pending(session, a.transfer.id)).status == PendingStatus.voided
            assert await ledger.platform_balance(session, AccountCode.fees, "INR", f"test-{unique}") == 20

    async def test_post_of_a_hold_needs_a_destination(self, runtime: Runtime, unique: str) -> None:
        member = await make_member(runtime)
        await fund(runtime, member, 10)
        async with runtime.db.sessionmaker() as session, session.begin():
            held = await ledger.hold(
                session, member_id=member, amount=10, currency="INR", idempotency_key=f"h:{unique}"
            )
            with pytest.raises(ledger.InvalidPosting):
                await ledger.post_pending(session, held.transfer.id)


class TestExpiry:
    async def test_expired_transfers_are_voided_others_untouched(self, runtime: Runtime, unique: str) -> None:
        member = await make_member(runtime)
        past = await _earn(runtime, member, unique, 100, expires_at=utcnow() - timedelta(seconds=1))
        future = await _earn(runtime, member, unique, 200, expires_at=utcnow() + timedelta(hours=1))
        forever = await _earn(runtime, member, unique, 400)
        async with runtime.db.sessionmaker() as session, session.begin():
            expired = await ledger.expire_due(session, limit=1000)
        assert expired >= 1
        async with runtime.db.sessionmaker() as session:
            assert (await ledger.get_pending(session, past)).status == PendingStatus.expired
            assert (await ledger.get_pending(session, future)).status == PendingStatus.pending
            assert (await ledger.get_pending(session, forever)).status == PendingStatus.pending
        assert await _balance(runtime, member) == (600, 0, 0)
        assert await _expense(runtime, unique) == -600
        # Expired is final: it cannot be posted afterwards.
        async with runtime.db.sessionmaker() as session, session.begin():
            with pytest.raises(ledger.PendingTransferFinal):
                await ledger.post_pending(session, past)

    async def test_past_its_expiry_it_is_voided_not_posted_even_before_the_job_runs(
        self, runtime: Runtime, unique: str
    ) -> None:
        member = await make_member(runtime)
        past = await _earn(runtime, member, unique, 100, expires_at=utcnow() - timedelta(seconds=1))
        async with runtime.db.sessionmaker() as session, session.begin():
            with pytest.raises(ledger.PendingTransferExpired):
                await ledger.post_pending(session, past)
        assert await _balance(runtime, member) == (100, 0, 0)
        async with runtime.db.sessionmaker() as session, session.begin():
            await ledger.void_pending(session, past)
        assert await _balance(runtime, member) == (0, 0, 0)
        assert await _expense(runtime, unique) == 0

    async def test_worker_job_expires_in_batches(self, runtime: Runtime, unique: str) -> None:
        from referloop.ledger.tasks import expire_pending_transfers

        member = await make_member(runtime)
        ids = [
            await _earn(runtime, member, unique, 10, expires_at=utcnow() - timedelta(seconds=1))
            for _ in range(5)
        ]
        assert await expire_pending_transfers(runtime, batch=2) >= 5
        async with runtime.db.sessionmaker() as session:
            assert {(await ledger.get_pending(session, i)).status for i in ids} == {PendingStatus.expired}
        assert await _balance(runtime, member) == (0, 0, 0)


def test_expiry_is_registered_as_a_periodic_job() -> None:
    from referloop.core.periodic import periodic_jobs
    from referloop.ledger import tasks

    job = periodic_jobs["ledger.expire_pending"]
    assert job.run is tasks.expire_pending_batch
    assert job.full_batch == tasks.EXPIRY_BATCH
