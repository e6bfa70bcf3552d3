"""A referee's contact data: encrypted at rest, found through blind indexes, shown masked.

Emails are indexed in their canonical form (lower case, `+tag` dropped, Gmail dots dropped), so the
address a lead was invited with matches the one they sign up or apply with however it is written.
New rows are indexed under the primary field key (`email_index`, `phone_index`); look rows up with
`email_indexes`/`phone_indexes` (every configured key), so that rows indexed before a key rotation
still match until `referloop keys rotate` recomputes them (`rotate_lead_keys`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import func, or_, select

from referloop.core.security.rotation import BATCH, RotationResult, not_primary
from referloop.identity.models import User
from referloop.referrals.lifecycle.models import Referral
from referloop.referrals.service.members import canonical_email
from referloop.runtime import Runtime

_EMAIL_INDEX = "referrals.referee_email"
_PHONE_INDEX = "referrals.referee_phone"
_LABEL_MAX = 40


def email_index(rt: Runtime, email: str) -> bytes:
    """The index to store (primary key)."""
    return rt.cipher.blind_index(canonical_email(email), context=_EMAIL_INDEX)


def phone_index(rt: Runtime, phone: str) -> bytes:
    """The index to store (primary key). `phone` in E.164 (the form request models and identity
    store)."""
    return rt.cipher.blind_index(phone.strip(), context=_PHONE_INDEX)


def email_indexes(rt: Runtime, email: str) -> list[bytes]:
    """The indexes to look `email` up by (every configured key, primary first)."""
    return rt.cipher.blind_indexes(canonical_email(email), context=_EMAIL_INDEX)


def phone_indexes(rt: Runtime, phone: str) -> list[bytes]:
    """The indexes to look `phone` up by (every configured key, primary first)."""
    return rt.cipher.blind_indexes(phone.strip(), context=_PHONE_INDEX)


def masked_name(name: str) -> str:
    """First name and the initial of the last: "Asha Rao" -> "Asha R."; one word stays as it is."""
    parts = name.split()
    if not parts:
        return "Someone"
    first = parts[0][:30]
    label = f"{first} {parts[-1][0].upper()}." if len(parts) > 1 else first
    return label[:_LABEL_MAX]


@dataclass(frozen=True, slots=True)
class SealedLead:
    name: str
    email: str | None
    phone: str | None
    email_index: bytes | None
    phone_index: bytes | None
    label: str


def seal_lead(rt: Runtime, name: str, email: str | None, phone: str | None) -> SealedLead:
    return SealedLead(
        name=rt.cipher.encrypt(name, context="referrals.lead_name"),
        email=rt.cipher.encrypt(email, context="referrals.lead_email") if email else None,
        phone=rt.cipher.encrypt(phone, context="referrals.lead_phone") if phone else None,
        email_index=email_index(rt, email) if email else None,
        phone_index=phone_index(rt, phone) if phone else None,
        label=masked_name(name),
    )


def open_lead_email(rt: Runtime, stored: str | None) -> str | None:
    return rt.cipher.decrypt(stored, context="referrals.lead_email") if stored else None


def open_lead_name(rt: Runtime, stored: str | None) -> str | None:
    return rt.cipher.decrypt(stored, context="referrals.lead_name") if stored else None


_LEAD_COLUMNS = {
    "lead_name": "referrals.lead_name",
    "lead_email": "referrals.lead_email",
    "lead_phone": "referrals.lead_phone",
}


def _reindex(
    rt: Runtime, stored: bytes | None, candidates: list[str], context: str, result: RotationResult
) -> bytes | None:
    """`stored` recomputed under the primary key from whichever candidate plaintext it is the index
    of (under any configured key); left as it is when none is (counted as unverifiable)."""
    if stored is None:
        return None
    for value in candidates:
        kid = rt.cipher.index_key_of(stored, value, context=context)
        if kid == rt.cipher.primary_kid:
            return stored
        if kid is not None:
            result.rotated += 1
            return rt.cipher.blind_index(value, context=context)
    result.unverifiable += 1
    return stored


async def rotate_lead_keys(rt: Runtime, batch: int = BATCH) -> RotationResult:
    """`referloop keys rotate` for referrals: re-encrypt the lead's name, email and phone, and
    recompute `email_index`/`phone_index` under the primary key. An index is recomputed from the
    lead's stored contact or, failing that, the referee's account, once checked to be the index of
    that value (so a changed email never replaces the one the referral was matched by). A batch per
    transaction, rows locked FOR UPDATE."""
    result = RotationResult("referrals")
    any_value = or_(
        *(getattr(Referral, c).is_not(None) for c in _LEAD_COLUMNS),
        Referral.email_index.is_not(None),
        Referral.phone_index.is_not(None),
    )
    after: uuid.UUID | None = None
    while True:
        async with rt.db.sessionmaker() as session, session.begin():
            stmt = (
                select(Referral, User.email, User.phone)
                .outerjoin(User, User.id == Referral.referee_id)
                .where(any_value)
                .order_by(Referral.id)
                .limit(batch)
                .with_for_update(of=Referral)
                .execution_options(populate_existing=True)
            )
            if after is not None:
                stmt = stmt.where(Referral.id > after)
            rows = (await session.execute(stmt)).all()
            after = rows[-1][0].id if rows else after
            for referral, user_email, user_phone in rows:
                plain: dict[str, str | None] = {}
                for column, context in _LEAD_COLUMNS.items():
                    stored = getattr(referral, column)
                    plain[column] = rt.cipher.decrypt(stored, context=context) if stored else None
                    if stored and not rt.cipher.is_primary(stored):
                        setattr(referral, column, rt.cipher.encrypt(plain[column] or "", context=context))
                        result.rotated += 1
                emails = [canonical_email(e) for e in (plain["lead_email"], user_email) if e]
                phones = [p.strip() for p in (plain["lead_phone"], user_phone) if p]
                email_ix = _reindex(rt, referral.email_index, emails, _EMAIL_INDEX, result)
                phone_ix = _reindex(rt, referral.phone_index, phones, _PHONE_INDEX, result)
                if email_ix != referral.email_index:
                    referral.email_index = email_ix
                if phone_ix != referral.phone_index:
                    referral.phone_index = phone_ix
        if len(rows) < batch:
            break
    async with rt.db.sessionmaker() as session:
        for column in _LEAD_COLUMNS:
            left = await session.scalar(
                select(func.count())
                .select_from(Referral)
                .where(not_primary(rt.cipher, getattr(Referral, column)))
            )
            result.remaining += left or 0
    return result
