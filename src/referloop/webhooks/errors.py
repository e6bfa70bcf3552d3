"""Errors of outbound webhooks; each renders as problem+json with a stable code."""

from __future__ import annotations

from referloop.core.errors import AppError, Conflict, NotFound


class EndpointNotFound(NotFound):
    code = "webhook_endpoint_not_found"
    title = "Webhook endpoint not found"


class DeliveryNotFound(NotFound):
    code = "webhook_delivery_not_found"
    title = "Webhook delivery not found"


class EndpointDisabled(Conflict):
    code = "webhook_endpoint_disabled"
    title = "Webhook endpoint disabled"


class EndpointUrlRefused(AppError):
    status_code = 422
    code = "webhook_url_refused"
    title = "Webhook URL refused"
