"""A referee's contact data: encrypted at rest, found through blind indexes, shown masked.

Emails are indexed in their canonical form (lower case, `+tag` dropped, Gmail dots dropped), so the
address a lead was invited with matches the one they sign up or apply with however it is written."""

from __future__ import annotations

from dataclasses import dataclass

from referloop.referrals.service.members import canonical_email
from referloop.runtime import Runtime

_EMAIL_INDEX = "referrals.referee_email"
_PHONE_INDEX = "referrals.referee_phone"
_LABEL_MAX = 40


def email_index(rt: Runtime, email: str) -> bytes:
    return rt.cipher.blind_index(canonical_email(email), context=_EMAIL_INDEX)


def phone_index(rt: Runtime, phone: str) -> bytes:
    """`phone` in E.164 (the form request models and identity store)."""
    return rt.cipher.blind_index(phone.strip(), context=_PHONE_INDEX)


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
