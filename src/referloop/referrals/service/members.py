"""What referrals needs to know about members, read through identity's service where it has one.

`member_id_by_referral_code`, `members_by_referral_codes`, `referral_code_of` and `is_live_member`
read identity's `users` table directly because identity has no service function for them yet; they
are the only such reads in this package (move them to identity when it has one)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import ColumnElement, exists, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from referloop.identity.models import User
from referloop.identity.service.accounts import get_user

GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})


@dataclass(frozen=True, slots=True)
class MemberFacts:
    """The facts campaign eligibility and self-referral checks look at."""

    id: uuid.UUID
    referral_code: str
    email: str | None
    phone: str | None
    country: str | None
    email_verified: bool
    phone_verified: bool
    kyc_status: str
    level: int = 1

    @classmethod
    def of(cls, user: User) -> MemberFacts:
        return cls(
            id=user.id,
            referral_code=user.referral_code,
            email=user.email,
            phone=user.phone,
            country=user.country,
            email_verified=user.email_verified_at is not None,
            phone_verified=user.phone_verified_at is not None,
            kyc_status=user.kyc_status,
            level=user.level,
        )


async def member_facts(session: AsyncSession, member_id: uuid.UUID) -> MemberFacts:
    return MemberFacts.of(await get_user(session, member_id))


async def member_id_by_referral_code(session: AsyncSession, code_key: str) -> uuid.UUID | None:
    member_id: uuid.UUID | None = await session.scalar(
        select(User.id).where(User.referral_code == code_key, User.deleted_at.is_(None))
    )
    return member_id


async def members_by_referral_codes(session: AsyncSession, code_keys: set[str]) -> dict[str, uuid.UUID]:
    rows = await session.execute(
        select(User.referral_code, User.id).where(
            User.referral_code.in_(code_keys), User.deleted_at.is_(None)
        )
    )
    return {code: member_id for code, member_id in rows.all()}


async def referral_code_of(session: AsyncSession, member_id: uuid.UUID) -> str | None:
    """The member's referral code, even once the account is deleted."""
    code: str | None = await session.scalar(select(User.referral_code).where(User.id == member_id))
    return code


def is_live_member(member_id: InstrumentedAttribute[uuid.UUID]) -> ColumnElement[bool]:
    """A condition for queries of other tables: `member_id` is a member whose account is not deleted."""
    return exists().where(User.id == member_id, User.deleted_at.is_(None))


def canonical_email(email: str) -> str:
    """One mailbox, one form: lower case, `+tag` dropped (most providers deliver `a+x@` to `a@`),
    and for Gmail the dots of the local part dropped and googlemail.com read as gmail.com."""
    local, _, domain = email.strip().lower().rpartition("@")
    local = local.split("+", 1)[0]
    if domain in GMAIL_DOMAINS:
        local, domain = local.replace(".", ""), "gmail.com"
    return f"{local}@{domain}"
