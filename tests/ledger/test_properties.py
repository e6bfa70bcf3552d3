"""Property-based: any sequence of ledger operations keeps the ledger sound.

Hypothesis draws a sequence of operations (rewards, pending earnings, payments between members,
holds, posts, partial posts, voids, expiry, reversals, replays), each run in its own committed
transaction. A plain Python model predicts every outcome (including refusals for lack of funds
and for final transfers). After the sequence: the database matches the model, every entry
balances per currency, every currency's balances sum to zero, no member balance is negative, and
reconcile finds nothing."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from referloop import ledger
from referloop.core.db import utcnow
from referloop.ledger import AccountCode, PendingKind, member_account, platform_account
from referloop.runtime import Runtime
from tests.ledger.conftest import make_members

CURRENCIES = ["INR", "JPY", "KWD"]
MEMBERS = 3

member_idx = st.integers(0, MEMBERS - 1)
currency = st.sampled_from(CURRENCIES)
amount = st.integers(1, 500)
operation = st.one_of(
    st.tuples(st.just("reward"), member_idx, currency, amount),
    st.tuples(st.just("earn"), member_idx, currency, amount, st.booleans()),  # bool: already expired
    st.tuples(st.just("pay"), member_idx, member_idx, currency, amount),
    st.tuples(st.just("hold"), member_idx, currency, amount),
    st.tuples(st.just("post"), st.integers(0, 50), st.integers(1, 100)),  # transfer index, percent
    st.tuples(st.just("void"), st.integers(0, 50)),
    st.tuples(st.just("expire")),
    st.tuples(st.just("reverse"), st.integers(0, 50)),
    st.tuples(st.just("replay"), st.integers(0, 50)),
)


@dataclass
class Model:
    members: list[uuid.UUID]
    scope: str
    # (member index, currency) -> [pending, available, held]
    wallets: dict[tuple[int, str], list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0]))
    platform: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))  # (code, currency)
    transfers: list[dict[str, Any]] = field(default_factory=list)
    plain: list[dict[str, Any]] = field(default_factory=list)  # plain entries: reversible, replayable

    def account(self, code: AccountCode) -> ledger.AccountRef:
        return platform_account(code, self.scope)


async def _run(rt: Runtime, model: Model, op: tuple[Any, ...], step: int) -> None:
    kind = op[0]
    key = f"{model.scope}:{step}"
    m, w = model.members, model.wallets
    async with rt.db.sessionmaker() as session, session.begin():
        if kind == "reward":
            _, i, cur, amt = op
            kwargs = dict(
                entry_type="referral.reward",
                source=model.account(AccountCode.reward_expense),
                destination=member_account(m[i]),
                amount=amt,
                currency=cur,
                idempotency_key=key,
            )
            posted = await ledger.move(session, **kwargs)  # type: ignore[arg-type]
            w[(i, cur)][1] += amt
            model.platform[("reward_expense", cur)] -= amt
            model.plain.append(
                {
                    "id": posted.id,
                    "kwargs": kwargs,
                    "legs": [(("m", i), cur, amt), (("p", "reward_expense"), cur, -amt)],
                    "reversed": False,
                }
            )
        elif kind == "earn":
            _, i, cur, amt, expired = op
            expires = utcnow() - timedelta(seconds=1) if expired else utcnow() + timedelta(days=1)
            result = await ledger.earn_pending(
                session,
                member_id=m[i],
                amount=amt,
                currency=cur,
                source=model.account(AccountCode.reward_expense),
                idempotency_key=key,
                expires_at=expires,
            )
            w[(i, cur)][0] += amt
            model.platform[("reward_expense", cur)] -= amt
            model.transfers.append(
                {
                    "id": result.transfer.id,
                    "kind": PendingKind.earning,
                    "i": i,
                    "cur": cur,
                    "amt": amt,
                    "open": True,
                    "expired": expired,
                }
            )
        elif kind == "pay":
            _, i, j, cur, amt = op
            kwargs = dict(
                entry_type="test.pay",
                source=member_account(m[i]),
                destination=member_account(m[j]),
                amount=amt,
                currency=cur,
                idempotency_key=key,
            )
            if i == j:
                with pytest.raises(ledger.InvalidPosting):
                    await ledger.move(session, **kwargs)  # type: ignore[arg-type]
                return
            if w[(i, cur)][1] < amt:
                with pytest.raises(ledger.InsufficientFunds):
                    await ledger.move(session, **kwargs)  # type: ignore[arg-type]
                return
            posted = await ledger.move(session, **kwargs)  # type: ignore[arg-type]
            w[(i, cur)][1] -= amt
            w[(j, cur)][1] += amt
            model.plain.append(
                {
                    "id": posted.id,
                    "kwargs": kwargs,
                    "legs": [(("m", i), cur, -amt), (("m", j), cur, amt)],
                    "reversed": False,
                }
            )
        elif kind == "hold":
            _, i, cur, amt = op
            if w[(i, cur)][1] < amt:
                with pytest.raises(ledger.InsufficientFunds):
                    await ledger.hold(session, member_id=m[i], amount=amt, currency=cur, idempotency_key=key)
                return
            result = await ledger.hold(session, member_id=m[i], amount=amt, currency=cur, idempotency_key=key)
            w[(i, cur)][1] -= amt
            w[(i, cur)][2] += amt
            model.transfers.append(
                {
                    "id": result.transfer.id,
                    "kind": PendingKind.hold,
                    "i": i,
                    "cur": cur,
                    "amt": amt,
                    "open": True,
                    "expired": False,
                }
            )
        elif kind in ("post", "void"):
            if not model.transfers:
                return
            t = model.transfers[op[1] % len(model.transfers)]
            part = max(1, t["amt"] * op[2] // 100) if kind == "post" else 0
            dest = model.account(AccountCode.payout_clearing) if t["kind"] is PendingKind.hold else None
            if not t["open"]:
                # The same request again is answered with its first result; anything else is refused.
                repeat = (kind == "post" and t["status"] == "posted" and t["posted"] == part) or (
                    kind == "void" and t["status"] == "voided"
                )
                call = (
                    ledger.post_pending(session, t["id"], amount=part, destination=dest)
                    if kind == "post"
                    else ledger.void_pending(session, t["id"])
                )
                if repeat:
                    assert (await call).replayed
                else:
                    with pytest.raises(ledger.PendingTransferFinal):
                        await call
                return
            if kind == "post" and t["expired"]:
                # Past its expiry it is only voided (by the expiry job or a void), never posted.
                with pytest.raises(ledger.PendingTransferExpired):
                    await ledger.post_pending(session, t["id"], amount=part, destination=dest)
                return
            if kind == "post":
                await ledger.post_pending(session, t["id"], amount=part, destination=dest)
            else:
                await ledger.void_pending(session, t["id"])
            _settle(model, t, part, "posted" if kind == "post" else "voided")
        elif kind == "expire":
            await ledger.expire_due(session, limit=10_000)
            for t in model.transfers:
                if t["open"] and t["expired"]:
                    _settle(model, t, 0, "expired")
        elif kind == "reverse":
            if not model.plain:
                return
            e = model.plain[op[1] % len(model.plain)]
            if e["reversed"]:
                again = await ledger.reverse_entry(session, e["id"], reason="property test")
                assert again.replayed
                return
            short = any(who[0] == "m" and w[(who[1], cur)][1] < amt for who, cur, amt in e["legs"])
            if short:
                with pytest.raises(ledger.InsufficientFunds):
                    await ledger.reverse_entry(session, e["id"], reason="property test")
                return
            await ledger.reverse_entry(session, e["id"], reason="property test")
            e["reversed"] = True
            for who, cur, amt in e["legs"]:
                if who[0] == "m":
                    w[(who[1], cur)][1] -= amt
                else:
                    model.platform[(who[1], cur)] -= amt
        elif kind == "replay":
            if not model.plain:
                return
            e = model.plain[op[1] % len(model.plain)]
            again = await ledger.move(session, **e["kwargs"])
            assert again.replayed and again.id == e["id"]


def _settle(model: Model, t: dict[str, Any], posted: int, status: str) -> None:
    """A transfer resolves: `posted` moves on, the rest goes back where it came from."""
    bal = model.wallets[(t["i"], t["cur"])]
    rest = t["amt"] - posted
    if t["kind"] is PendingKind.earning:
        bal[0] -= t["amt"]
        bal[1] += posted
        model.platform[("reward_expense", t["cur"])] += rest
    else:
        bal[2] -= t["amt"]
        bal[1] += rest
        model.platform[("payout_clearing", t["cur"])] += posted
    t.update(open=False, status=status, posted=posted)


@pytest.fixture(scope="module")
async def members(runtime: Runtime) -> list[uuid.UUID]:
    return await make_members(runtime, MEMBERS)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operation, min_size=1, max_size=25))
async def test_any_sequence_keeps_the_ledger_sound(
    runtime: Runtime, members: list[uuid.UUID], ops: list[tuple[Any, ...]]
) -> None:
    # Transfers an earlier example left open and already expired would expire during this one:
    # settle them first, then start the model from the balances as they are.
    async with runtime.db.sessionmaker() as session, session.begin():
        await ledger.expire_due(session, limit=10_000)
    async with runtime.db.sessionmaker() as session:
        start = {
            (i, b.currency): [b.pending, b.available, b.held]
            for i, mid in enumerate(members)
            for b in await ledger.balances_for(session, mid)
        }
    model = Model(members=members, scope=f"prop-{uuid.uuid4().hex[:12]}")
    for key, value in start.items():
        model.wallets[key] = list(value)
    for step, op in enumerate(ops):
        await _run(runtime, model, op, step)

    async with runtime.db.sessionmaker() as session:
        for i, mid in enumerate(members):
            for b in await ledger.balances_for(session, mid):
                assert [b.pending, b.available, b.held] == model.wallets[(i, b.currency)], (
                    i,
                    b.currency,
                    ops,
                )
                assert min(b.pending, b.available, b.held) >= 0
        for (code, cur), expected in model.platform.items():
            assert await ledger.platform_balance(session, code, cur, model.scope) == expected
        assert all(total == 0 for total in (await ledger.currency_totals(session)).values())
        report = await ledger.reconcile(session)
    assert report.ok, [str(d) for d in report.discrepancies]
