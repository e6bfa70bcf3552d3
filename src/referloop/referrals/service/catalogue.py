"""Universities and their programs: staff writes (audited) and the public, searchable catalogue."""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any, cast

from sqlalchemy import Numeric, Select, and_, exists, func, literal, or_, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.compliance import audit
from referloop.core.context import RequestContext
from referloop.core.db import utcnow
from referloop.core.errors import InvalidInput
from referloop.core.pagination import decode_cursor, paginate_by_id_desc, split_page
from referloop.identity.service.referral_codes import CROCKFORD_ALPHABET
from referloop.identity.service.sessions import Principal
from referloop.referrals.errors import ProgramNotFound, SlugTaken, UniversityNotFound
from referloop.referrals.models import Program, ProgramLevel, University
from referloop.referrals.schemas import ProgramCreate, ProgramUpdate, UniversityCreate, UniversityUpdate
from referloop.referrals.service import cache
from referloop.runtime import Runtime

SHORT_CODE_LENGTH = 6
_SHORT_CODE_ATTEMPTS = 5
# word_similarity(query, text) at or above this counts as a match: one typo in a word still matches
# ("compter science" -> "Computer Science" scores 0.74), unrelated words do not.
SEARCH_THRESHOLD = 0.5
_INTAKE = re.compile(r"^(\d{4})-(\d{2})(?:-(\d{2}))?$")


def _snapshot(obj: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in fields:
        value = getattr(obj, name)
        if isinstance(value, list):
            value = [str(v) for v in value]
        elif isinstance(value, (date, uuid.UUID)):
            value = str(value)
        out[name] = value
    return out


UNIVERSITY_FIELDS = ("name", "slug", "country", "website_url", "description", "active")
PROGRAM_FIELDS = (
    "university_id",
    "name",
    "slug",
    "short_code",
    "country",
    "level",
    "intakes",
    "fee_amount",
    "fee_currency",
    "description",
    "landing_url",
    "active",
)


def _search_text(program_name: str, university_name: str) -> str:
    return f"{program_name} {university_name}"


def _is_unique_violation(exc: IntegrityError, name: str) -> bool:
    constraint = getattr(getattr(exc.orig, "__cause__", None), "constraint_name", "") or str(exc.orig)
    return name in constraint


# -- universities ---------------------------------------------------------------------------------


async def get_university(
    session: AsyncSession, university_id: uuid.UUID, *, include_retired: bool = False
) -> University:
    university = await session.get(University, university_id)
    if university is None or (university.deleted_at is not None and not include_retired):
        raise UniversityNotFound("No such university.")
    return university


async def _university_slug_free(session: AsyncSession, slug: str, but: uuid.UUID | None = None) -> None:
    stmt = select(University.id).where(University.slug == slug, University.deleted_at.is_(None))
    if but is not None:
        stmt = stmt.where(University.id != but)
    if await session.scalar(stmt) is not None:
        raise SlugTaken(f"Another university already uses the slug {slug!r}.")


async def create_university(
    session: AsyncSession, actor: Principal, data: UniversityCreate, ctx: RequestContext
) -> University:
    await _university_slug_free(session, data.slug)
    university = University(**data.model_dump())
    try:
        async with session.begin_nested():
            session.add(university)
            await session.flush()
    except IntegrityError as exc:  # a concurrent create took the slug between check and insert
        raise SlugTaken(f"Another university already uses the slug {data.slug!r}.") from exc
    await audit.record(
        session,
        action="referrals.university_created",
        actor_id=actor.user_id,
        actor_type="staff",
        target_type="university",
        target_id=university.id,
        after=_snapshot(university, UNIVERSITY_FIELDS),
        ctx=ctx,
    )
    return university


async def _programs_of(session: AsyncSession, university_id: uuid.UUID) -> list[Program]:
    return list((await session.scalars(select(Program).where(Program.university_id == university_id))).all())


async def update_university(
    session: AsyncSession,
    rt: Runtime,
    actor: Principal,
    university_id: uuid.UUID,
    data: UniversityUpdate,
    ctx: RequestContext,
) -> University:
    university = await get_university(session, university_id)
    changes = data.model_dump(exclude_unset=True)
    if changes.get("slug") is not None:
        await _university_slug_free(session, changes["slug"], but=university.id)
    before = _snapshot(university, UNIVERSITY_FIELDS)
    for field, value in changes.items():
        if value is None and field not in {"website_url"}:
            continue  # required fields cannot be cleared
        setattr(university, field, value)
    programs = await _programs_of(session, university.id)
    if "name" in changes:
        for program in programs:
            program.search_text = _search_text(program.name, university.name)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as exc:
        if _is_unique_violation(exc, "uq_universities_slug_live"):  # taken between check and update
            raise SlugTaken(f"Another university already uses the slug {changes['slug']!r}.") from exc
        raise
    await audit.record(
        session,
        action="referrals.university_updated",
        actor_id=actor.user_id,
        actor_type="staff",
        target_type="university",
        target_id=university.id,
        before=before,
        after=_snapshot(university, UNIVERSITY_FIELDS),
        ctx=ctx,
    )
    await cache.invalidate_programs(rt, *(p.short_code for p in programs))
    return university


async def retire_university(
    session: AsyncSession, rt: Runtime, actor: Principal, university_id: uuid.UUID, ctx: RequestContext
) -> University:
    """Retired: hidden from the catalogue with all its programs, kept for history. Idempotent."""
    university = await get_university(session, university_id, include_retired=True)
    if university.deleted_at is None:
        university.deleted_at = utcnow()
        university.active = False
        await session.flush()
        await audit.record(
            session,
            action="referrals.university_retired",
            actor_id=actor.user_id,
            actor_type="staff",
            target_type="university",
            target_id=university.id,
            before={"retired": False},
            after={"retired": True},
            ctx=ctx,
        )
    await cache.invalidate_programs(rt, *(p.short_code for p in await _programs_of(session, university.id)))
    return university


async def list_universities(
    session: AsyncSession, *, include_retired: bool, cursor: str | None, limit: int
) -> tuple[list[University], str | None]:
    stmt = select(University)
    if not include_retired:
        stmt = stmt.where(University.deleted_at.is_(None))
    rows = list((await session.scalars(paginate_by_id_desc(stmt, University.id, cursor, limit))).all())
    return split_page(rows, limit, lambda u: [u.id])


# -- programs (staff) -----------------------------------------------------------------------------


def _new_short_code() -> str:
    return "".join(secrets.choice(CROCKFORD_ALPHABET) for _ in range(SHORT_CODE_LENGTH))


async def _program_slug_free(
    session: AsyncSession, university_id: uuid.UUID, slug: str, but: uuid.UUID | None = None
) -> None:
    stmt = select(Program.id).where(
        Program.university_id == university_id, Program.slug == slug, Program.deleted_at.is_(None)
    )
    if but is not None:
        stmt = stmt.where(Program.id != but)
    if await session.scalar(stmt) is not None:
        raise SlugTaken(f"This university already has a program with the slug {slug!r}.")


async def create_program(
    session: AsyncSession, actor: Principal, data: ProgramCreate, ctx: RequestContext
) -> tuple[Program, University]:
    university = await get_university(session, data.university_id)
    await _program_slug_free(session, university.id, data.slug)
    values = data.model_dump(exclude={"fee", "country", "intakes"})
    for _ in range(_SHORT_CODE_ATTEMPTS):
        program = Program(
            **values,
            country=data.country or university.country,
            intakes=sorted(set(data.intakes)),
            fee_amount=data.fee.amount,
            fee_currency=data.fee.currency,
            short_code=_new_short_code(),
            search_text=_search_text(data.name, university.name),
        )
        try:
            async with session.begin_nested():
                session.add(program)
                await session.flush()
            break
        except IntegrityError as exc:
            if _is_unique_violation(exc, "short_code"):
                continue  # 1 in 32^6 per existing program: draw again
            raise SlugTaken(f"This university already has a program with the slug {data.slug!r}.") from exc
    else:
        raise RuntimeError("could not draw a unique program short code")
    await audit.record(
        session,
        action="referrals.program_created",
        actor_id=actor.user_id,
        actor_type="staff",
        target_type="program",
        target_id=program.id,
        after=_snapshot(program, PROGRAM_FIELDS),
        ctx=ctx,
    )
    return program, university


async def get_program(
    session: AsyncSession, program_id: uuid.UUID, *, include_retired: bool = False
) -> tuple[Program, University]:
    row = (
        await session.execute(
            select(Program, University)
            .join(University, University.id == Program.university_id)
            .where(Program.id == program_id)
        )
    ).first()
    if row is None:
        raise ProgramNotFound("No such program.")
    program, university = row
    if not include_retired and (program.deleted_at is not None or university.deleted_at is not None):
        raise ProgramNotFound("No such program.")
    return program, university


async def update_program(
    session: AsyncSession,
    rt: Runtime,
    actor: Principal,
    program_id: uuid.UUID,
    data: ProgramUpdate,
    ctx: RequestContext,
) -> tuple[Program, University]:
    program, university = await get_program(session, program_id)
    changes = data.model_dump(exclude_unset=True)
    if changes.get("slug") is not None:
        await _program_slug_free(session, university.id, changes["slug"], but=program.id)
    before = _snapshot(program, PROGRAM_FIELDS)
    fee = changes.pop("fee", None)
    if fee is not None:
        program.fee_amount, program.fee_currency = fee["amount"], fee["currency"]
    for field, value in changes.items():
        if value is None:
            continue  # required fields cannot be cleared
        setattr(program, field, sorted(set(value)) if field == "intakes" else value)
    program.search_text = _search_text(program.name, university.name)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as exc:
        if _is_unique_violation(exc, "uq_programs_university_slug_live"):  # taken between check and update
            raise SlugTaken(
                f"This university already has a program with the slug {changes['slug']!r}."
            ) from exc
        raise
    await audit.record(
        session,
        action="referrals.program_updated",
        actor_id=actor.user_id,
        actor_type="staff",
        target_type="program",
        target_id=program.id,
        before=before,
        after=_snapshot(program, PROGRAM_FIELDS),
        ctx=ctx,
    )
    await cache.invalidate_programs(rt, program.short_code)
    return program, university


async def retire_program(
    session: AsyncSession, rt: Runtime, actor: Principal, program_id: uuid.UUID, ctx: RequestContext
) -> tuple[Program, University]:
    """Hidden from the catalogue and its links stop redirecting; kept for history. Idempotent."""
    program, university = await get_program(session, program_id, include_retired=True)
    if program.deleted_at is None:
        program.deleted_at = utcnow()
        program.active = False
        await session.flush()
        await audit.record(
            session,
            action="referrals.program_retired",
            actor_id=actor.user_id,
            actor_type="staff",
            target_type="program",
            target_id=program.id,
            before={"retired": False},
            after={"retired": True},
            ctx=ctx,
        )
    await cache.invalidate_programs(rt, program.short_code)
    return program, university


# -- the public catalogue -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProgramFilters:
    country: str | None = None
    level: ProgramLevel | None = None
    intake: str | None = None  # YYYY-MM (any day of that month) or YYYY-MM-DD
    university: str | None = None  # id or slug
    q: str | None = None


def _intake_range(value: str) -> tuple[date, date]:
    match = _INTAKE.match(value)
    try:
        if match is None:
            raise ValueError
        year, month, day = int(match[1]), int(match[2]), match[3]
        if day is not None:
            start = date(year, month, int(day))
            return start, date.fromordinal(start.toordinal() + 1)
        start = date(year, month, 1)
        return start, date(year + month // 12, month % 12 + 1, 1)
    except ValueError as exc:
        raise InvalidInput("`intake` is a month (2027-09) or a date (2027-09-01).") from exc


def visible_programs() -> Select[Any]:
    """Programs the public sees: live and active, of a live and active university."""
    stmt = (
        select(Program, University)
        .join(University, University.id == Program.university_id)
        .where(
            Program.deleted_at.is_(None),
            Program.active.is_(True),
            University.deleted_at.is_(None),
            University.active.is_(True),
        )
    )
    # Typed loosely so the shared pagination helpers accept it; rows are (Program, University).
    return cast("Select[Any]", stmt)


def _apply_filters(stmt: Select[Any], filters: ProgramFilters) -> Select[Any]:
    if filters.country:
        stmt = stmt.where(Program.country == filters.country)
    if filters.level:
        stmt = stmt.where(Program.level == filters.level.value)
    if filters.intake:
        start, end = _intake_range(filters.intake)
        day = func.unnest(Program.intakes).table_valued("d").render_derived()
        stmt = stmt.where(exists(select(literal(1)).select_from(day).where(day.c.d >= start, day.c.d < end)))
    if filters.university:
        try:
            stmt = stmt.where(University.id == uuid.UUID(filters.university))
        except ValueError:
            stmt = stmt.where(University.slug == filters.university.lower())
    return stmt


async def list_programs(
    session: AsyncSession, filters: ProgramFilters, *, cursor: str | None, limit: int
) -> tuple[list[tuple[Program, University]], str | None]:
    stmt = _apply_filters(visible_programs(), filters)
    if not filters.q:
        rows = [
            (p, u) for p, u in (await session.execute(paginate_by_id_desc(stmt, Program.id, cursor, limit)))
        ]
        return split_page(rows, limit, lambda r: [r[0].id])

    # Typo-tolerant search: `q <% search_text` is word_similarity(q, search_text) >= the threshold and
    # is answered from the GIN trigram index. Best match first; the cursor holds (score, id).
    # Session-level (not transaction-local): read sessions run in autocommit, where a local setting
    # would end before the search runs. The value is constant and only this query's operator reads it.
    await session.execute(
        text("SELECT set_config('pg_trgm.word_similarity_threshold', :t, false)"),
        {"t": str(SEARCH_THRESHOLD)},
    )
    score = func.round(func.word_similarity(filters.q, Program.search_text).cast(Numeric), 4)
    stmt = stmt.add_columns(score.label("score")).where(Program.search_text.op("%>")(filters.q))
    if cursor:
        values = decode_cursor(cursor)
        try:
            last_score, last_id = Decimal(values[0]), uuid.UUID(values[1])
        except (InvalidOperation, ValueError, IndexError) as exc:
            raise InvalidInput("The cursor is not one this API returned.") from exc
        stmt = stmt.where(or_(score < last_score, and_(score == last_score, Program.id < last_id)))
    stmt = stmt.order_by(score.desc(), Program.id.desc()).limit(limit + 1)
    scored = [(p, u, s) for p, u, s in await session.execute(stmt)]
    page, next_cursor = split_page(scored, limit, lambda r: [r[2], r[0].id])
    return [(p, u) for p, u, _ in page], next_cursor


async def get_public_program(session: AsyncSession, program_id: uuid.UUID) -> tuple[Program, University]:
    row = (await session.execute(visible_programs().where(Program.id == program_id))).first()
    if row is None:
        raise ProgramNotFound("No such program.")
    return row[0], row[1]
