"""`CurrentPartner`: the partner behind an API key, rate-limited per key, every call audited.

The key comes as `Authorization: Bearer rlp_...` or `X-API-Key: rlp_...`. After the route has run,
the dependency appends one audit row (actor_type "partner", actor_id the key) in the request's own
transaction, so the row commits with what the call changed; a call that fails changes nothing and
leaves no row. A route can say what the call was with `note_call` (action, target, details)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from referloop.compliance import audit
from referloop.core.deps import ContextDep, RuntimeDep, WriteSession
from referloop.referrals.partner.errors import InvalidApiKey
from referloop.referrals.partner.service import keys
from referloop.referrals.partner.service.keys import PartnerPrincipal

RATE_LIMIT_NAME = "partner-key"


@dataclass(frozen=True)
class CallNote:
    action: str
    target_type: str | None = None
    target_id: str | None = None
    details: dict[str, Any] | None = None


def note_call(
    request: Request,
    action: str,
    *,
    target_type: str | None = None,
    target_id: Any = None,
    details: dict[str, Any] | None = None,
) -> None:
    request.state.partner_call = CallNote(
        action, target_type, str(target_id) if target_id is not None else None, details
    )


def api_key_from(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    api_key = request.headers.get("x-api-key", "").strip()
    if api_key:
        return api_key
    raise InvalidApiKey("Send your API key as `Authorization: Bearer rlp_...` or as `X-API-Key`.")


async def current_partner(
    request: Request, rt: RuntimeDep, session: WriteSession, ctx: ContextDep
) -> AsyncIterator[PartnerPrincipal]:
    partner = await keys.authenticate(session, rt, api_key_from(request))
    await rt.limiter.hit(partner.rate_limit, RATE_LIMIT_NAME, str(partner.key_id))
    yield partner
    # Reached only when the route succeeded (an error is raised at the yield and passes through).
    note: CallNote = getattr(request.state, "partner_call", None) or CallNote("partner.api_call")
    route = request.scope.get("route")
    await audit.record(
        session,
        action=note.action,
        actor_id=partner.key_id,
        actor_type="partner",
        target_type=note.target_type or "university",
        target_id=note.target_id or partner.university_id,
        after={
            "method": request.method,
            "route": getattr(route, "path", request.url.path),
            "university_id": str(partner.university_id),
            **(note.details or {}),
        },
        ctx=ctx,
    )


# scope="function": the audit row is written before the request's transaction commits.
CurrentPartner = Annotated[PartnerPrincipal, Depends(current_partner, scope="function")]
