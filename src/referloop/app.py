"""FastAPI app factory: middleware, error handlers, routers, lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from referloop.analytics.routes import router as analytics_router
from referloop.config import Settings, get_settings
from referloop.core.errors import install_error_handlers, install_problem_openapi, problem_responses
from referloop.core.middleware import EdgeMiddleware
from referloop.core.observability import configure_logging, configure_tracing
from referloop.core.startup import freeze_startup_objects
from referloop.core.system_routes import NotReady
from referloop.core.system_routes import router as system_router
from referloop.disputes.routes import router as disputes_router
from referloop.disputes.routes import staff_router as disputes_staff_router
from referloop.identity.routes import router as identity_router
from referloop.identity.staff_routes import router as identity_staff_router
from referloop.payouts.methods.routes import router as payout_methods_router
from referloop.payouts.withdrawals.routes import router as withdrawals_router
from referloop.payouts.withdrawals.staff_routes import router as withdrawals_staff_router
from referloop.payouts.withdrawals.webhooks import router as payout_webhooks_router
from referloop.referrals.lifecycle.routes import router as referral_lifecycle_router
from referloop.referrals.lifecycle.staff_routes import router as referral_lifecycle_staff_router
from referloop.referrals.partner.routes import router as partner_router
from referloop.referrals.partner.schemas import OPENAPI_MODELS as PARTNER_OPENAPI_MODELS
from referloop.referrals.partner.staff_routes import router as partner_keys_staff_router
from referloop.referrals.rewards.staff_routes import router as rewards_staff_router
from referloop.referrals.routes import redirect_router as referrals_redirect_router
from referloop.referrals.routes import router as referrals_router
from referloop.referrals.staff_routes import router as referrals_staff_router
from referloop.runtime import Runtime
from referloop.wallet.routes import router as wallet_router
from referloop.webhooks.routes import partner_router as partner_webhooks_router
from referloop.webhooks.routes import staff_router as webhooks_staff_router

API_DESCRIPTION = """Referloop: members refer people to programs, partners report outcomes, members earn
into a wallet and withdraw it. Errors are `application/problem+json` (RFC 9457); lists are
cursor-paginated; money is `{"amount": <minor units>, "currency": "INR"}`."""


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    rt = runtime or Runtime.build(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        freeze_startup_objects()
        yield
        if runtime is None:  # a runtime handed in belongs to the caller
            await rt.close()

    app = FastAPI(
        title="Referloop API",
        version="0.1.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        responses=problem_responses(422, 500),
    )
    app.state.runtime = rt
    install_error_handlers(app)
    install_problem_openapi(app, [NotReady, *PARTNER_OPENAPI_MODELS])
    if rt.settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=rt.settings.cors_allow_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
            max_age=600,
        )
    app.add_middleware(EdgeMiddleware, metrics=rt.metrics, access_log=rt.settings.access_log)
    app.include_router(referrals_redirect_router)  # first: the hottest route matches at once
    for router in (
        system_router,
        identity_router,
        identity_staff_router,
        payout_methods_router,
        disputes_router,
        disputes_staff_router,
        wallet_router,
    ):
        app.include_router(router)
    app.include_router(referrals_router)
    app.include_router(referrals_staff_router)
    # After the catalogue's router: its fixed /v1/referrals/... paths match before /v1/referrals/{id}.
    for router in (referral_lifecycle_router, referral_lifecycle_staff_router, rewards_staff_router):
        app.include_router(router)
    app.include_router(analytics_router)
    for router in (partner_router, partner_webhooks_router, partner_keys_staff_router, webhooks_staff_router):
        app.include_router(router)
    for router in (withdrawals_router, withdrawals_staff_router, payout_webhooks_router):
        app.include_router(router)
    if rt.settings.bench_routes_enabled:
        from referloop.core.bench_routes import router as bench_router

        app.include_router(bench_router)
    configure_tracing(
        app, rt.db.engine, rt.settings.otel_service_name, rt.settings.otel_exporter_otlp_endpoint
    )
    return app
