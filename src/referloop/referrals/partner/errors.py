"""Errors of the partner API; each renders as problem+json with a stable code."""

from __future__ import annotations

from referloop.core.errors import AppError, InvalidInput, NotFound, Unauthorized


class InvalidApiKey(Unauthorized):
    code = "invalid_api_key"
    title = "Invalid API key"


class ApiKeyNotFound(NotFound):
    code = "api_key_not_found"
    title = "API key not found"


class ApiKeyRevoked(AppError):
    status_code = 409
    code = "api_key_revoked"
    title = "API key revoked"


class CsvRefused(InvalidInput):
    code = "csv_refused"
    title = "CSV file refused"


class PayloadTooLarge(AppError):
    status_code = 413
    code = "payload_too_large"
    title = "Payload too large"


class UnsupportedMediaType(AppError):
    status_code = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"
