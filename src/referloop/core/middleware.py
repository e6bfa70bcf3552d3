"""One pure-ASGI middleware for request ids, security headers, the last-resort 500, access logs and
metrics.

Pure ASGI (not BaseHTTPMiddleware) because it wraps every request, including the hot ones. It sits
outside every other middleware of ours, so that whatever answers (a route, CORS, an error handler,
or this middleware's own 500) leaves with the request id and the security headers."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import orjson
import structlog
from opentelemetry import trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from referloop.core.context import request_id_var
from referloop.core.errors import INTERNAL_ERROR_DETAIL, PROBLEM_JSON, UNSTORABLE_TEXT_DETAIL, problem_body
from referloop.core.observability import Metrics

log = structlog.get_logger("referloop.access")

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"strict-transport-security", b"max-age=63072000; includeSubDomains"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
# The interactive docs load their own scripts and styles.
DOCS_CSP = (
    b"default-src 'self'; img-src 'self' data: https:; style-src 'self' 'unsafe-inline' https:; "
    b"script-src 'self' 'unsafe-inline' https:; frame-ancestors 'none'"
)
DOCS_PATHS = ("/docs", "/redoc")
# API answers carry tokens and personal data: no shared or browser cache keeps them unless a route
# says otherwise (the JWKS does).
NO_STORE = (b"cache-control", b"no-store")


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = incoming if incoming and _REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False
        is_docs = scope["path"].startswith(DOCS_PATHS)

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = list(message.get("headers", []))
                has_cache_control = any(name.lower() == b"cache-control" for name, _ in headers)
                headers.append((b"x-request-id", request_id.encode()))
                for name, value in SECURITY_HEADERS:
                    if is_docs and name == b"content-security-policy":
                        value = DOCS_CSP
                    headers.append((name, value))
                if not has_cache_control:
                    headers.append(NO_STORE)
                message["headers"] = headers
            await send(message)

        try:
            nul_in = _nul_location(scope)
            if nul_in:
                # Refused here rather than where PostgreSQL would refuse it: by then a streamed
                # answer may have started. (A NUL in a JSON body is caught where PostgreSQL refuses it.)
                error = {
                    "field": "",
                    "location": nul_in,
                    "message": UNSTORABLE_TEXT_DETAIL,
                    "type": "string_nul",
                }
                await _send_problem(
                    scope,
                    request_id,
                    send_wrapper,
                    422,
                    "validation_error",
                    "Invalid input",
                    UNSTORABLE_TEXT_DETAIL,
                    {"errors": [error]},
                )
            else:
                await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            # The catch-all: log the cause with the request id, answer a problem that names only the
            # request id. Once an answer has started nothing can be sent, so the server sees the error.
            log.error("unhandled_error", method=scope["method"], path=scope["path"], exc_info=exc)
            span = trace.get_current_span()
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
            if response_started:
                raise
            await _send_problem(
                scope,
                request_id,
                send_wrapper,
                500,
                "internal_error",
                "Internal server error",
                INTERNAL_ERROR_DETAIL,
            )
        finally:
            elapsed = time.perf_counter() - started
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template, str(status)).observe(elapsed)
            if status >= 500 or self.access_log:
                (log.error if status >= 500 else log.info)(
                    "request",
                    method=method,
                    path=scope["path"],
                    route=template,
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                )
            request_id_var.reset(token)


def _nul_location(scope: Scope) -> str | None:
    """Where a NUL character came in, if one did: PostgreSQL cannot store it in text."""
    if "\x00" in scope["path"]:
        return "path"
    query: bytes = scope.get("query_string", b"")
    if b"%00" in query or b"\x00" in query:
        return "query"
    return None


async def _send_problem(
    scope: Scope,
    request_id: str,
    send: Send,
    status: int,
    code: str,
    title: str,
    detail: str,
    extra: dict[str, Any] | None = None,
) -> None:
    body = orjson.dumps(
        problem_body(
            status, code, title, detail, instance=scope["path"], request_id=request_id, **(extra or {})
        )
    )
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
