"""`referloop worker`: relays the outbox, runs every domain's event consumers and periodic jobs.

Domains register consumers (core/outbox/consumers.py) and periodic jobs (core/periodic.py) in their
`tasks.py`; list each such module here (one line) so the worker, and `referloop outbox retry-dead`,
know them."""

from __future__ import annotations

import asyncio
import importlib
import signal

from referloop.core.observability import configure_logging
from referloop.core.outbox.consumers import ConsumerRegistry, registry
from referloop.core.outbox.runner import run_worker
from referloop.core.periodic import periodic_jobs
from referloop.core.startup import freeze_startup_objects
from referloop.runtime import Runtime

TASK_MODULES = (
    "referloop.analytics.tasks",
    "referloop.compliance.audit.tasks",
    "referloop.ledger.tasks",
    "referloop.notifications.tasks",
    "referloop.payouts.withdrawals.tasks",
    "referloop.referrals.tasks",
    "referloop.referrals.lifecycle.tasks",
    "referloop.referrals.rewards.tasks",
    "referloop.webhooks.tasks",
)


def load_task_modules() -> ConsumerRegistry:
    for module in TASK_MODULES:
        importlib.import_module(module)
    return registry


async def serve_worker(rt: Runtime) -> None:
    """Run until SIGTERM or SIGINT, then finish the work in hand and return."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    registry = load_task_modules()
    freeze_startup_objects()
    try:
        await run_worker(rt, registry, stop, list(periodic_jobs.values()))
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def worker_command() -> None:
    """Relay the outbox to RabbitMQ and run the event consumers (with no AMQP_URL: drain the outbox
    in-process). Stops cleanly on SIGTERM."""
    from referloop.cli import with_runtime
    from referloop.config import get_settings

    configure_logging(get_settings().log_level)
    with_runtime(serve_worker)
