"""One error base with a stable code; every error answer is RFC 9457 problem+json."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = structlog.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://referloop.dev/problems/"
INTERNAL_ERROR_DETAIL = "Something went wrong on our side; quote the request id when reporting it."


# Members of every problem body: an error's extra fields may not reuse these names.
RESERVED_PROBLEM_FIELDS = frozenset({"type", "title", "status", "detail", "code", "instance", "request_id"})


class AppError(Exception):
    status_code = 400
    code = "bad_request"
    title = "Bad request"
    # Most errors roll the transaction back. A few refusals must keep what was written before them
    # (a failed-attempt counter, the audit row of a refused login, a revoked token family):
    # those set this, and the request's session commits before the error is answered.
    keep_changes = False

    def __init__(
        self, detail: str | None = None, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        clash = RESERVED_PROBLEM_FIELDS.intersection(extra)
        if clash:
            # Caught where the error is made, not as a 500 when the handler renders it.
            raise TypeError(f"problem extras may not be named {sorted(clash)}: they are RFC 9457 fields")
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = headers
        self.extra = extra


class NotFound(AppError):
    status_code = 404
    code = "not_found"
    title = "Not found"


class Conflict(AppError):
    status_code = 409
    code = "conflict"
    title = "Conflict"


class Unauthorized(AppError):
    status_code = 401
    code = "unauthorized"
    title = "Authentication required"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"}, **extra)


class Forbidden(AppError):
    status_code = 403
    code = "forbidden"
    title = "Forbidden"


class InvalidInput(AppError):
    status_code = 422
    code = "validation_error"
    title = "Invalid input"


class TooManyRequests(AppError):
    status_code = 429
    code = "rate_limited"
    title = "Too many requests"

    def __init__(self, retry_after: int, detail: str | None = None) -> None:
        retry_after = max(1, retry_after)
        super().__init__(
            detail or f"Try again in {retry_after} seconds.",
            headers={"Retry-After": str(retry_after)},
            retry_after=retry_after,
        )


class ServiceUnavailable(AppError):
    status_code = 503
    code = "service_unavailable"
    title = "Service unavailable"


def problem_body(
    status: int, code: str, title: str, detail: str, *, instance: str, request_id: str | None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "instance": instance,
    }
    if request_id:
        body["request_id"] = request_id
    body.update(extra)
    return body


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    request: Request,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = problem_body(
        status,
        code,
        title,
        detail,
        instance=request.url.path,
        request_id=getattr(request.state, "request_id", None),
        **extra,
    )
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


_HTTP_TITLES = {
    400: ("bad_request", "Bad request"),
    401: ("unauthorized", "Authentication required"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    406: ("not_acceptable", "Not acceptable"),
    413: ("payload_too_large", "Payload too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
}


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    # The rejected input is deliberately not echoed back: it may be a password.
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        out.append(
            {
                "field": ".".join(loc[1:]) if len(loc) > 1 else ".".join(loc),
                "location": loc[0] if loc else "",
                "message": err.get("msg", ""),
                "type": err.get("type", ""),
            }
        )
    return out


# character_not_in_repertoire (a NUL in text), untranslatable_character
_UNSTORABLE_TEXT_SQLSTATES = {"22021", "22P05"}
UNSTORABLE_TEXT_DETAIL = "The request contains a character that is not allowed (NUL)."


def _allowed_methods(request: Request) -> list[str]:
    """Starlette's 405 names only the methods of the first route whose path matched; a path served
    by several routes (GET and PATCH /v1/me) must list all of them (RFC 9110 §15.5.6)."""
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.router.routes):
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods.update(route.methods or ())
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(request: Request, exc: AppError) -> JSONResponse:
        return problem(exc.status_code, exc.code, exc.title, exc.detail, request, exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(
            422,
            "validation_error",
            "Invalid input",
            "The request has invalid fields.",
            request,
            errors=_field_errors(exc),
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI answers 400 for a body that is not UTF-8, 422 for any other malformed JSON;
            # JSON is UTF-8 (RFC 8259), so both are the same mistake and get the same answer.
            return problem(
                422,
                "validation_error",
                "Invalid input",
                "The request body is not valid JSON.",
                request,
                errors=[{"field": "", "location": "body", "message": "Not UTF-8", "type": "json_invalid"}],
            )
        code, title = _HTTP_TITLES.get(exc.status_code, ("http_error", "HTTP error"))
        detail = exc.detail if isinstance(exc.detail, str) else title
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return problem(exc.status_code, code, title, detail, request, headers)

    @app.exception_handler(DBAPIError)
    async def _unstorable_text(request: Request, exc: DBAPIError) -> JSONResponse:
        # PostgreSQL cannot store some text (a NUL character) that every JSON and URL parser accepts.
        # Whatever field it came in, it is bad input, not a failure of ours; the write was rolled back.
        if getattr(exc.orig, "sqlstate", None) in _UNSTORABLE_TEXT_SQLSTATES:
            return problem(
                422,
                "validation_error",
                "Invalid input",
                UNSTORABLE_TEXT_DETAIL,
                request,
                errors=[
                    {"field": "", "location": "", "message": UNSTORABLE_TEXT_DETAIL, "type": "string_nul"}
                ],
            )
        raise exc

    # The edge middleware answers unhandled errors itself (so that the answer carries the request id
    # and the security headers); this handler is the last resort for an app built without it.
    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled_error", path=request.url.path, exc_info=exc)
        return problem(500, "internal_error", "Internal server error", INTERNAL_ERROR_DETAIL, request)


class FieldError(BaseModel):
    field: str = Field(description="Dotted path of the field inside its location, e.g. `address.city`")
    location: str = Field(description="`body`, `query`, `path` or `header`")
    message: str
    type: str = Field(description="Stable machine-readable reason, e.g. `missing`, `string_too_long`")


class Problem(BaseModel):
    """RFC 9457 problem details. Further members may appear for specific problem types."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": PROBLEM_BASE + "not_found",
                    "title": "Not found",
                    "status": 404,
                    "detail": "No such session.",
                    "code": "not_found",
                    "instance": "/v1/auth/sessions/0193",
                    "request_id": "5f0c6a8e2a0b4a55a3c1f0f9c2a7d6b1",
                }
            ]
        }
    )

    type: str = Field(description="URI naming the problem type; stable")
    title: str
    status: int
    detail: str
    code: str = Field(description="Stable machine-readable code, the last segment of `type`")
    instance: str | None = None
    request_id: str | None = Field(default=None, description="Echo of `X-Request-ID`; quote it to support")
    errors: list[FieldError] | None = Field(
        default=None, description="Per-field reasons, for `validation_error`"
    )
    retry_after: int | None = Field(default=None, description="Seconds to wait, for `rate_limited`")


PROBLEM_MODELS: list[type[BaseModel]] = [Problem, FieldError]
_REF_TEMPLATE = "#/components/schemas/{model}"

_DESCRIPTIONS = {
    400: "Bad request",
    401: "Not signed in, or the token is invalid",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    422: "Invalid input",
    429: "Rate limited (see Retry-After)",
    500: "Internal error",
    503: "Unavailable",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries documenting problem+json answers (schemas: see add_problem_schemas)."""
    return {
        s: {
            "description": _DESCRIPTIONS.get(s, "Error"),
            "content": {PROBLEM_JSON: {"schema": {"$ref": _REF_TEMPLATE.format(model="Problem")}}},
        }
        for s in statuses
    }


def add_problem_schemas(openapi: dict[str, Any], extra_models: list[type[BaseModel]] | None = None) -> None:
    """Put the Problem schemas into an OpenAPI document's components, and drop FastAPI's default
    validation-error schemas: every 422 this API answers is a Problem, never `HTTPValidationError`."""
    models = [*PROBLEM_MODELS, *(extra_models or [])]
    _, top = models_json_schema([(m, "serialization") for m in models], ref_template=_REF_TEMPLATE)
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(top.get("$defs", {}))
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def install_problem_openapi(app: FastAPI, extra_models: list[type[BaseModel]] | None = None) -> None:
    """Make the app's /openapi.json carry the Problem schemas (see add_problem_schemas)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            add_problem_schemas(build(), extra_models)
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]
