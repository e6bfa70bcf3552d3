"""Public catalogue, member codes and links, and the share-link redirect."""

from __future__ import annotations

import uuid
from functools import lru_cache
from http.cookies import SimpleCookie
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import RedirectResponse, Response

from referloop.core.deps import ContextDep, ReadSession, RuntimeDep, WriteSession, client_ip, runtime_of
from referloop.core.errors import problem_responses
from referloop.core.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page
from referloop.identity.deps import CurrentMember
from referloop.referrals.errors import VanityCodeNotFound
from referloop.referrals.models import Program, ProgramLevel, University, VanityCode
from referloop.referrals.schemas import (
    CountryCode,
    LinkOut,
    LinkPage,
    Money,
    ProgramOut,
    UniversityRef,
    VanityCodeIn,
    VanityCodeOut,
)
from referloop.referrals.service import catalogue, clicks, codes

router = APIRouter(prefix="/v1", tags=["referrals"])
redirect_router = APIRouter(tags=["referrals: links"])

DeviceId = Annotated[
    str | None,
    Header(
        alias="X-Device-ID", max_length=200, description="The app's install id (used against self-referral)."
    ),
]


def program_out(program: Program, university: University) -> ProgramOut:
    return ProgramOut(
        id=program.id,
        university=UniversityRef(id=university.id, name=university.name, slug=university.slug),
        name=program.name,
        slug=program.slug,
        short_code=program.short_code,
        country=program.country,
        level=ProgramLevel(program.level),
        intakes=program.intakes,
        fee=Money(amount=program.fee_amount, currency=program.fee_currency),
        description=program.description,
        landing_url=program.landing_url,
        active=program.active,
        created_at=program.created_at,
        updated_at=program.updated_at,
    )


def vanity_out(row: VanityCode) -> VanityCodeOut:
    return VanityCodeOut(code=row.code, status=row.status, created_at=row.created_at)


@router.get("/programs", response_model=Page[ProgramOut], responses=problem_responses(422))
async def list_programs(
    session: ReadSession,
    country: Annotated[CountryCode | None, Query(description="ISO 3166-1 alpha-2, e.g. IN")] = None,
    level: ProgramLevel | None = None,
    intake: Annotated[
        str | None,
        Query(max_length=10, pattern=r"^[0-9-]+$", description="A month (2027-09) or a date (2027-09-01)"),
    ] = None,
    university: Annotated[
        str | None, Query(max_length=100, pattern=r"^[A-Za-z0-9-]+$", description="University id or slug")
    ] = None,
    q: Annotated[
        str | None,
        Query(
            min_length=2,
            max_length=100,
            pattern=r"^[^\x00]*$",
            description="Search program and university names; tolerates typos",
        ),
    ] = None,
    cursor: Annotated[str | None, Query(max_length=300, pattern=r"^[A-Za-z0-9_-]+$")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[ProgramOut]:
    """Programs open for referral, newest first, or best match first with `q`."""
    filters = catalogue.ProgramFilters(
        country=country, level=level, intake=intake, university=university, q=q.strip() if q else None
    )
    rows, next_cursor = await catalogue.list_programs(session, filters, cursor=cursor, limit=limit)
    return Page[ProgramOut](items=[program_out(p, u) for p, u in rows], next_cursor=next_cursor)


@router.get("/programs/{program_id}", response_model=ProgramOut, responses=problem_responses(404))
async def get_program(program_id: uuid.UUID, session: ReadSession) -> ProgramOut:
    return program_out(*await catalogue.get_public_program(session, program_id))


@router.get("/referrals/links", response_model=LinkPage, responses=problem_responses(401, 422))
async def list_links(
    principal: CurrentMember,
    session: WriteSession,
    rt: RuntimeDep,
    device_id: DeviceId = None,
    cursor: Annotated[str | None, Query(max_length=300, pattern=r"^[A-Za-z0-9_-]+$")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> LinkPage:
    """Your share link for each program: `{base}/r/{code}-{program}`. A visitor who follows it is sent
    to the program's page, and a sign-up within the attribution window is credited to you."""
    if device_id:
        await codes.remember_device(session, rt, principal.user_id, device_id)
    code, links, next_cursor = await codes.list_links(
        session, rt, principal.user_id, cursor=cursor, limit=limit
    )
    return LinkPage(
        code=code,
        next_cursor=next_cursor,
        items=[
            LinkOut(
                program_id=link.program.id,
                program_name=link.program.name,
                university_name=link.university.name,
                code=link.code,
                slug=link.slug,
                url=link.url,
            )
            for link in links
        ],
    )


@router.get("/referrals/vanity-code", response_model=VanityCodeOut, responses=problem_responses(401, 404))
async def get_vanity_code(principal: CurrentMember, session: ReadSession) -> VanityCodeOut:
    row = await codes.active_vanity_code(session, principal.user_id)
    if row is None:
        raise VanityCodeNotFound("You have not chosen a vanity code.")
    return vanity_out(row)


@router.put(
    "/referrals/vanity-code", response_model=VanityCodeOut, responses=problem_responses(401, 409, 422)
)
async def set_vanity_code(
    body: VanityCodeIn,
    principal: CurrentMember,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
    device_id: DeviceId = None,
) -> VanityCodeOut:
    """Choose the code your links carry (4-20 letters and digits, case-insensitive, unique). Changing
    it keeps your old links working; reserved and offensive words are refused (422), taken ones 409."""
    if device_id:
        await codes.remember_device(session, rt, principal.user_id, device_id)
    return vanity_out(await codes.set_vanity_code(session, rt, principal.user_id, body.code, ctx))


@lru_cache(maxsize=64)
def _click_cookie_suffix(name: str, max_age: int, secure: bool) -> str:
    """What follows `name=<click id>` in the click cookie's Set-Cookie value, as Starlette's
    `set_cookie(httponly=True, samesite="lax", path="/")` writes it (a UUID needs no quoting)."""
    cookie: SimpleCookie = SimpleCookie()
    cookie[name] = "v"
    morsel = cookie[name]
    morsel["max-age"] = max_age
    morsel["httponly"] = True
    morsel["samesite"] = "lax"
    morsel["path"] = "/"
    if secure:
        morsel["secure"] = True
    return cookie.output(header="").strip().removeprefix(f"{name}=v")


@redirect_router.get(
    "/r/{slug}",
    status_code=302,
    response_class=RedirectResponse,
    responses={
        302: {
            "description": "To the program's page, with utm_source, ref and rl_click parameters; "
            "sets the `rl_click` cookie"
        },
        **problem_responses(404),
    },
)
async def follow_link(request: Request, slug: Annotated[str, Path(max_length=40)]) -> Response:
    """A share link. Answers from Redis alone (no database query when warm); the click is recorded in
    the background. Known bots are redirected but counted apart and never credited."""
    rt = runtime_of(request)
    headers = request.headers
    redirect = await clicks.follow_link(
        rt,
        slug,
        ip=client_ip(request, rt.settings.trusted_proxy_count),
        user_agent=headers.get("user-agent"),
        referer=headers.get("referer"),
        country=headers.get(rt.settings.click_country_header),
    )
    # What RedirectResponse and set_cookie would send, without their per-request work (the location
    # comes quoted as RedirectResponse quotes it; the cookie is what SimpleCookie writes for it).
    response = Response(status_code=302)
    raw = response.raw_headers
    raw.append((b"cache-control", b"no-store"))
    raw.append((b"location", redirect.location.encode("latin-1")))
    if redirect.click_id is not None:
        name = rt.settings.click_cookie_name
        suffix = _click_cookie_suffix(
            name, redirect.max_age_seconds, rt.settings.public_base_url.startswith("https://")
        )
        raw.append((b"set-cookie", f"{name}={redirect.click_id}{suffix}".encode("latin-1")))
    return response
