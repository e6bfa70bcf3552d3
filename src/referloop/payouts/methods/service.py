"""Adding, changing, listing and removing payout methods; decrypting them for a payout; key rotation."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.compliance import audit
from referloop.core.context import RequestContext
from referloop.core.db import utcnow
from referloop.core.errors import Conflict, NotFound
from referloop.core.ids import uuid7
from referloop.payouts.methods.models import PayoutMethod
from referloop.payouts.methods.schemas import (
    IbanBankAccount,
    IndianBankAccount,
    PayoutMethodIn,
    PaypalMethod,
    UpiMethod,
)
from referloop.runtime import Runtime

COOL_DOWN = timedelta(hours=24)
MAX_METHODS_PER_MEMBER = 10
_DETAILS_CONTEXT = "payout_methods.details"
_INDEX_CONTEXT = "payout_methods.fingerprint"


class DuplicatePayoutMethod(Conflict):
    code = "duplicate_payout_method"
    title = "Payout method already added"


class TooManyPayoutMethods(Conflict):
    code = "too_many_payout_methods"
    title = "Too many payout methods"


def _mask_tail(value: str, keep: int = 4) -> str:
    return "••••" + value[-keep:]


def _describe(data: PayoutMethodIn) -> tuple[dict[str, Any], str, str]:
    """(details to encrypt, masked form, normalized identity for the fingerprint)."""
    details = data.model_dump(exclude={"label"})
    if isinstance(data, IndianBankAccount):
        return (
            details,
            f"{data.ifsc[:4]} {_mask_tail(data.account_number)}",
            f"in:{data.ifsc}:{data.account_number}",
        )
    if isinstance(data, IbanBankAccount):
        return details, f"{data.iban[:2]} {_mask_tail(data.iban)}", f"iban:{data.iban}"
    if isinstance(data, UpiMethod):
        name, _, bank = data.upi_id.partition("@")
        return details, f"{name[:2]}••••@{bank}", f"upi:{data.upi_id}"
    assert isinstance(data, PaypalMethod)
    local, _, domain = data.email.partition("@")
    return details, f"{local[:2]}••••@{domain}", f"paypal:{data.email}"


def _public(method: PayoutMethod) -> dict[str, Any]:
    return {"id": str(method.id), "kind": method.kind, "masked": method.masked, "label": method.label}


async def _owned(
    session: AsyncSession, member_id: uuid.UUID, method_id: uuid.UUID, *, lock: bool = False
) -> PayoutMethod:
    stmt = select(PayoutMethod).where(
        PayoutMethod.id == method_id, PayoutMethod.member_id == member_id, PayoutMethod.deleted_at.is_(None)
    )
    method = await session.scalar(stmt.with_for_update() if lock else stmt)
    if method is None:
        raise NotFound("No such payout method.")
    return method


def _apply(rt: Runtime, method: PayoutMethod, data: PayoutMethodIn) -> None:
    details, masked, identity = _describe(data)
    method.kind = data.kind
    method.label = data.label
    method.details_encrypted = rt.cipher.encrypt(orjson.dumps(details).decode(), context=_DETAILS_CONTEXT)
    method.key_id = rt.cipher.primary_kid
    method.masked = masked
    method.fingerprint = rt.cipher.blind_index(f"{method.member_id}:{identity}", context=_INDEX_CONTEXT)
    method.usable_from = utcnow() + COOL_DOWN


async def _flush_unique(session: AsyncSession) -> None:
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as exc:
        raise DuplicatePayoutMethod("You have already added this payout method.") from exc


async def add_method(
    session: AsyncSession, rt: Runtime, member_id: uuid.UUID, data: PayoutMethodIn, ctx: RequestContext
) -> PayoutMethod:
    count = await session.scalar(
        select(func.count()).where(PayoutMethod.member_id == member_id, PayoutMethod.deleted_at.is_(None))
    )
    if (count or 0) >= MAX_METHODS_PER_MEMBER:
        raise TooManyPayoutMethods(f"Remove a method first: at most {MAX_METHODS_PER_MEMBER} are allowed.")
    method = PayoutMethod(id=uuid7(), member_id=member_id)
    _apply(rt, method, data)
    session.add(method)
    await _flush_unique(session)
    await audit.record(
        session,
        action="payout_method.added",
        actor_id=member_id,
        target_type="payout_method",
        target_id=method.id,
        after=_public(method),
        ctx=ctx,
    )
    return method


async def replace_method(
    session: AsyncSession,
    rt: Runtime,
    member_id: uuid.UUID,
    method_id: uuid.UUID,
    data: PayoutMethodIn,
    ctx: RequestContext,
) -> PayoutMethod:
    method = await _owned(session, member_id, method_id, lock=True)
    before = _public(method)
    _apply(rt, method, data)
    await _flush_unique(session)
    await audit.record(
        session,
        action="payout_method.changed",
        actor_id=member_id,
        target_type="payout_method",
        target_id=method.id,
        before=before,
        after=_public(method),
        ctx=ctx,
    )
    return method


async def remove_method(
    session: AsyncSession, member_id: uuid.UUID, method_id: uuid.UUID, ctx: RequestContext
) -> None:
    method = await _owned(session, member_id, method_id, lock=True)
    method.deleted_at = utcnow()
    await audit.record(
        session,
        action="payout_method.removed",
        actor_id=member_id,
        target_type="payout_method",
        target_id=method.id,
        before=_public(method),
        ctx=ctx,
    )


async def list_methods(session: AsyncSession, member_id: uuid.UUID) -> list[PayoutMethod]:
    return list(
        (
            await session.scalars(
                select(PayoutMethod)
                .where(PayoutMethod.member_id == member_id, PayoutMethod.deleted_at.is_(None))
                .order_by(PayoutMethod.created_at)
            )
        ).all()
    )


async def get_method(session: AsyncSession, member_id: uuid.UUID, method_id: uuid.UUID) -> PayoutMethod:
    return await _owned(session, member_id, method_id)


def decrypt_details(rt: Runtime, method: PayoutMethod) -> dict[str, Any]:
    """The full account details, for the payout provider call only. Never log or return them."""
    details: dict[str, Any] = orjson.loads(
        rt.cipher.decrypt(method.details_encrypted, context=_DETAILS_CONTEXT)
    )
    return details


async def rotate_keys(session: AsyncSession, rt: Runtime, batch: int = 500) -> int:
    """Re-encrypt (and re-index) every method not under the primary key. Returns how many."""
    done = 0
    while True:
        rows = (
            await session.scalars(
                select(PayoutMethod)
                .where(PayoutMethod.key_id != rt.cipher.primary_kid)
                .order_by(PayoutMethod.id)
                .limit(batch)
                .with_for_update(skip_locked=True)
            )
        ).all()
        if not rows:
            return done
        for method in rows:
            details = decrypt_details(rt, method)
            method.details_encrypted = rt.cipher.encrypt(
                orjson.dumps(details).decode(), context=_DETAILS_CONTEXT
            )
            method.key_id = rt.cipher.primary_kid
            _, _, identity = _describe(_parse(details))
            method.fingerprint = rt.cipher.blind_index(
                f"{method.member_id}:{identity}", context=_INDEX_CONTEXT
            )
        await session.flush()
        done += len(rows)


def _parse(details: dict[str, Any]) -> PayoutMethodIn:
    from pydantic import TypeAdapter

    parsed: PayoutMethodIn = TypeAdapter(PayoutMethodIn).validate_python(details)
    return parsed
