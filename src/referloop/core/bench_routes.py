"""Routes that exist only for `bench/`: the baseline every API benchmark is compared against.

Mounted by the app factory only when `REFERLOOP_BENCH_ROUTES_ENABLED=true`; never in a real
deployment. The baseline is the cheapest request that still goes through the same stack as a real
route (middleware, dependency injection, the read session and its pool), so that a route's figure
divided by the baseline's tells how much the route itself costs."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import text

from referloop.core.deps import ReadSession
from referloop.core.errors import NotFound

router = APIRouter(prefix="/bench", tags=["bench"], include_in_schema=False)

_SELECT_USER_ID = text("SELECT id FROM users WHERE id = :id")


@router.get("/baseline/{user_id}")
async def baseline(user_id: uuid.UUID, session: ReadSession) -> dict[str, str]:
    """One SELECT by primary key through the app's read session."""
    found = await session.scalar(_SELECT_USER_ID, {"id": user_id})
    if found is None:
        raise NotFound("No such user.")
    return {"id": str(found)}


_BARE_LOCATION = "http://127.0.0.1:9/landing?utm_source=referloop&ref="


@router.get("/redirect/{slug}", status_code=302, response_class=RedirectResponse)
async def bare_redirect(slug: Annotated[str, Path(max_length=40)]) -> Response:
    """The baseline of `GET /r/{slug}`: the same stack and the same kind of answer (a 302 that must
    not be cached), with none of the redirect's work (no Redis, no click, no cookie)."""
    return RedirectResponse(_BARE_LOCATION + slug, status_code=302, headers={"Cache-Control": "no-store"})
