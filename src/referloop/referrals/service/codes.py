"""Codes and share links: member codes (from identity), vanity codes, and the per-program links.

A share link is `{public_base_url}/r/{code}-{program short code}`. The code is the member's active
vanity code if they chose one, else their referral code. Codes are compared in identity's
Crockford-normalized form (case-insensitive, I/L = 1, O = 0), the form sign-up stores them in."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache as memoize
from importlib.resources import files

from sqlalchemy import ColumnElement, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.compliance import audit
from referloop.core.context import RequestContext
from referloop.core.db import utcnow
from referloop.core.pagination import paginate_by_id_desc, split_page
from referloop.core.security.fields import load_or_create_dev_field_key
from referloop.identity.service.referral_codes import normalize_referral_code
from referloop.identity.service.sessions import Principal
from referloop.referrals.errors import VanityCodeNotFound, VanityCodeRefused, VanityCodeTaken
from referloop.referrals.models import MemberDevice, Program, University, VanityCode, VanityStatus
from referloop.referrals.service import cache
from referloop.referrals.service.campaigns import link_windows
from referloop.referrals.service.catalogue import visible_programs
from referloop.referrals.service.members import (
    is_live_member,
    member_facts,
    member_id_by_referral_code,
    members_by_referral_codes,
    referral_code_of,
)
from referloop.runtime import Runtime


@memoize
def blocked_vanity_keys() -> frozenset[str]:
    text = files("referloop.referrals").joinpath("vanity_blocklist.txt").read_text()
    return frozenset(
        normalize_referral_code(line.strip())
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    )


def code_key(code: str) -> str:
    return normalize_referral_code(code)


@dataclass(frozen=True, slots=True)
class ResolvedCode:
    member_id: uuid.UUID
    code: str  # as the member shares it


def _resolving() -> tuple[ColumnElement[bool], ...]:
    """The vanity codes that still resolve: not revoked, and their member's account not deleted (as
    for member codes), so a closed account's link never sets the click cookie."""
    return (VanityCode.status != VanityStatus.revoked.value, is_live_member(VanityCode.member_id))


async def resolve_code(session: AsyncSession, code: str) -> ResolvedCode | None:
    """Whose code this is. Member referral codes first, then vanity codes (active or replaced: old
    links keep working; a revoked one, or one of a deleted account, belongs to no one)."""
    key = code_key(code)
    member_id = await member_id_by_referral_code(session, key)
    if member_id is not None:
        return ResolvedCode(member_id, key)
    row = await session.scalar(select(VanityCode).where(VanityCode.code_key == key, *_resolving()))
    return ResolvedCode(row.member_id, row.code) if row is not None else None


async def resolve_codes(session: AsyncSession, codes: Iterable[str]) -> dict[str, ResolvedCode]:
    """`resolve_code` for many codes at once (two queries), keyed by code key."""
    keys = {code_key(c) for c in codes}
    if not keys:
        return {}
    found: dict[str, ResolvedCode] = {}
    for row in (
        await session.execute(
            select(VanityCode.code_key, VanityCode.member_id, VanityCode.code).where(
                VanityCode.code_key.in_(keys), *_resolving()
            )
        )
    ).all():
        found[row[0]] = ResolvedCode(row[1], row[2])
    for key, member_id in (await members_by_referral_codes(session, keys)).items():
        found[key] = ResolvedCode(member_id, key)  # member codes win, as in resolve_code
    return found


async def active_vanity_code(session: AsyncSession, member_id: uuid.UUID) -> VanityCode | None:
    row: VanityCode | None = await session.scalar(
        select(VanityCode).where(
            VanityCode.member_id == member_id, VanityCode.status == VanityStatus.active.value
        )
    )
    return row


async def sharing_code(session: AsyncSession, member_id: uuid.UUID) -> str:
    vanity = await active_vanity_code(session, member_id)
    return vanity.code if vanity is not None else (await member_facts(session, member_id)).referral_code


async def set_vanity_code(
    session: AsyncSession, rt: Runtime, member_id: uuid.UUID, code: str, ctx: RequestContext
) -> VanityCode:
    """Choose (or change) the member's vanity code. The old one keeps resolving to them (links
    already shared keep working) and stays reserved, so no one else can take it over."""
    key = code_key(code)
    if key in blocked_vanity_keys():
        raise VanityCodeRefused("This code is reserved or not allowed; choose another.")
    current = await active_vanity_code(session, member_id)
    if current is not None and current.code_key == key:
        if current.code != code:  # only the letter case changed
            current.code = code
            await session.flush()
        return current
    taken = await session.scalar(select(VanityCode.id).where(VanityCode.code_key == key))
    if taken is not None or await member_id_by_referral_code(session, key) is not None:
        raise VanityCodeTaken("This code is taken; choose another.")
    now = utcnow()
    if current is not None:
        current.status, current.replaced_at = VanityStatus.replaced.value, now
    row = VanityCode(
        member_id=member_id, code=code, code_key=key, status=VanityStatus.active.value, created_at=now
    )
    try:
        async with session.begin_nested():
            session.add(row)
            await session.flush()
    except IntegrityError as exc:  # taken concurrently by someone else
        raise VanityCodeTaken("This code is taken; choose another.") from exc
    await audit.record(
        session,
        action="referrals.vanity_code_set",
        actor_id=member_id,
        target_type="user",
        target_id=member_id,
        before={"code": current.code if current else None},
        after={"code": code},
        ctx=ctx,
    )
    await cache.invalidate_codes(rt, key)  # a negative entry may be cached for it
    return row


async def revoke_vanity_code(
    session: AsyncSession, rt: Runtime, actor: Principal, code: str, reason: str, ctx: RequestContext
) -> VanityCode:
    """Admins: the code stops resolving at once and stays reserved; the member may choose another."""
    key = code_key(code)
    row = await session.scalar(select(VanityCode).where(VanityCode.code_key == key).with_for_update())
    if row is None:
        raise VanityCodeNotFound("No such vanity code.")
    if row.status != VanityStatus.revoked.value:
        before = row.status
        row.status, row.revoked_at, row.revoked_by, row.revoked_reason = (
            VanityStatus.revoked.value,
            utcnow(),
            actor.user_id,
            reason,
        )
        await session.flush()
        await audit.record(
            session,
            action="referrals.vanity_code_revoked",
            actor_id=actor.user_id,
            actor_type="staff",
            target_type="user",
            target_id=row.member_id,
            before={"code": row.code, "status": before},
            after={"code": row.code, "status": row.status, "reason": reason},
            ctx=ctx,
        )
    await cache.invalidate_codes(rt, key)
    return row


async def forget_member_codes(session: AsyncSession, rt: Runtime, member_id: uuid.UUID) -> None:
    """For the account-deletion flow, once the account is marked deleted: drop the link cache of
    every code of the member (their referral code and each vanity code), so that their links stop
    crediting them at once rather than when the cached entries expire."""
    keys = list(await session.scalars(select(VanityCode.code_key).where(VanityCode.member_id == member_id)))
    referral_code = await referral_code_of(session, member_id)
    if referral_code is not None:
        keys.append(referral_code)
    await cache.invalidate_codes(rt, *keys)


# -- devices --------------------------------------------------------------------------------------


_device_keys: dict[str, bytes] = {}


def _hash_key(rt: Runtime) -> bytes:
    """The HMAC key for click IPs and device ids: the configured salt, else one derived from the
    field-encryption keys (so development needs no extra secret)."""
    configured = rt.settings.click_ip_salt.get_secret_value()
    cache_key = configured or str(rt.settings.var_dir)
    key = _device_keys.get(cache_key)
    if key is None:
        material = configured or (
            rt.settings.field_encryption_keys.get_secret_value()
            or load_or_create_dev_field_key(rt.settings.var_dir / "keys")
        )
        key = _device_keys[cache_key] = hashlib.sha256(
            b"referloop/referrals/hash-key|" + material.encode()
        ).digest()
    return key


def keyed_hash(rt: Runtime, purpose: str, value: str) -> bytes:
    return hmac.new(_hash_key(rt), f"{purpose}|{value}".encode(), hashlib.sha256).digest()


async def remember_device(session: AsyncSession, rt: Runtime, member_id: uuid.UUID, device_id: str) -> None:
    """Record that `device_id` (the app's install id, `X-Device-ID`) was used on this account."""
    digest = keyed_hash(rt, "device", device_id.strip())
    now = utcnow()
    await session.execute(
        pg_insert(MemberDevice)
        .values(member_id=member_id, device_hash=digest, first_seen_at=now, last_seen_at=now)
        .on_conflict_do_update(index_elements=["member_id", "device_hash"], set_={"last_seen_at": now})
    )


async def device_seen_on(session: AsyncSession, rt: Runtime, member_id: uuid.UUID, device_id: str) -> bool:
    digest = keyed_hash(rt, "device", device_id.strip())
    found = await session.scalar(
        select(MemberDevice.member_id).where(
            MemberDevice.member_id == member_id, MemberDevice.device_hash == digest
        )
    )
    return found is not None


# -- links ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Link:
    program: Program
    university: University
    code: str
    slug: str
    url: str


def link_slug(code: str, short_code: str) -> str:
    return f"{code}-{short_code}"


async def list_links(
    session: AsyncSession, rt: Runtime, member_id: uuid.UUID, *, cursor: str | None, limit: int
) -> tuple[str, list[Link], str | None]:
    """One share link per program in the public catalogue. Also warms the redirect cache for the
    member's code and these programs, so the first visitor of a fresh link does not wait on the
    database."""
    code = await sharing_code(session, member_id)
    rows = [
        (p, u)
        for p, u in await session.execute(paginate_by_id_desc(visible_programs(), Program.id, cursor, limit))
    ]
    page, next_cursor = split_page(rows, limit, lambda r: [r[0].id])
    base = rt.settings.public_base_url.rstrip("/")
    links = [
        Link(p, u, code, link_slug(code, p.short_code), f"{base}/r/{link_slug(code, p.short_code)}")
        for p, u in page
    ]
    ttl = rt.settings.referral_link_cache_ttl_seconds
    windows = await link_windows(
        session, [p.id for p, _ in page], rt.settings.referral_attribution_window_days, utcnow()
    )
    pipe = rt.redis.pipeline(transaction=False)
    pipe.set(cache.code_key(code_key(code)), cache.code_value(member_id, code), ex=ttl)
    for program, _ in page:
        pipe.set(
            cache.program_key(program.short_code),
            cache.program_value(program.id, program.landing_url, windows[program.id]),
            ex=ttl,
        )
    await pipe.execute()
    return code, links, next_cursor
