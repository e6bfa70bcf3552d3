"""JSON logs (structlog), Prometheus metrics and OpenTelemetry traces."""

from __future__ import annotations

import logging
import sys
import weakref
from typing import Any, TextIO

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy.ext.asyncio import AsyncEngine

from referloop.core.context import request_id_var
from referloop.core.db import trace_raw_statements


def _add_request_id(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    rid = request_id_var.get()
    if rid and "request_id" not in event_dict:
        event_dict["request_id"] = rid
    return event_dict


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Every log line is one JSON object on stdout (or `stream`); stdlib loggers (uvicorn,
    sqlalchemy) go through it too."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _add_request_id,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # our middleware logs requests


class Metrics:
    """Prometheus metrics of one process, in their own registry so tests can build many apps."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "referloop_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "referloop_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.outbox_backlog = Gauge(
            "referloop_outbox_backlog", "Outbox events not yet published", registry=self.registry
        )
        self.outbox_oldest_age = Gauge(
            "referloop_outbox_oldest_age_seconds",
            "Age of the oldest unpublished outbox event",
            registry=self.registry,
        )
        self.outbox_dead = Gauge(
            "referloop_outbox_dead_letters",
            "Outbox events that exhausted their retries",
            registry=self.registry,
        )
        self.db_pool_in_use = Gauge(
            "referloop_db_pool_connections_in_use",
            "Database connections checked out, per pool (write, read)",
            ["pool"],
            registry=self.registry,
        )
        self.db_pool_size = Gauge(
            "referloop_db_pool_size",
            "Database connections held by each pool (write, read)",
            ["pool"],
            registry=self.registry,
        )


def configure_tracing(app: Any, engine: AsyncEngine, service_name: str, otlp_endpoint: str) -> bool:
    """Instrument FastAPI, SQLAlchemy and Redis, so that a request's span has its SQL and Redis calls
    as children. Spans go to OTLP when an endpoint is set. With no endpoint and no tracer provider
    installed by the host (tests install one with an in-memory exporter; `opentelemetry-instrument`
    installs one from its environment), nothing would receive the spans, so none are made: tracing
    costs nothing where it is off. Returns whether the app is traced."""
    from opentelemetry import trace
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        if not otlp_endpoint:
            return False
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
        trace.set_tracer_provider(provider)
        provider = trace.get_tracer_provider()  # another thread may have won the race to set it
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        excluded_urls="/healthz$,/readyz$,/metrics$",
        exclude_spans=["receive", "send"],
    )
    _trace_engine(engine, provider)
    trace_raw_statements(trace.get_tracer("referloop.db", tracer_provider=provider))
    redis_instrumentor = RedisInstrumentor()
    if not redis_instrumentor.is_instrumented_by_opentelemetry:
        redis_instrumentor.instrument(tracer_provider=provider)
    return True


_traced_engines: weakref.WeakSet[Any] = weakref.WeakSet()


def _trace_engine(engine: AsyncEngine, provider: Any) -> None:
    """Listen to one engine's statements. SQLAlchemyInstrumentor.instrument() would do this only for
    the first engine of the process (it is a singleton) and refuses SQLAlchemy 2.1 by its version pin,
    although the event API it uses is unchanged; its EngineTracer is used directly instead."""
    sync_engine = engine.sync_engine
    if sync_engine in _traced_engines:
        return
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.instrumentation.sqlalchemy.version import __version__ as sqla_instr_version
    from opentelemetry.metrics import get_meter
    from opentelemetry.trace import get_tracer

    tracer = get_tracer("opentelemetry.instrumentation.sqlalchemy", sqla_instr_version, provider)
    connections = get_meter(
        "opentelemetry.instrumentation.sqlalchemy", sqla_instr_version
    ).create_up_down_counter(
        "db.client.connections.usage", unit="connections", description="Connections by state"
    )
    EngineTracer(tracer, sync_engine, connections)  # type: ignore[no-untyped-call]
    _traced_engines.add(sync_engine)
