"""Who is asking and from where: carried from the HTTP edge into services and the audit log."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RequestContext:
    request_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None


SYSTEM_CONTEXT = RequestContext()

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
