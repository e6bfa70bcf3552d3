"""Wake periodic jobs when their work arrives, through PostgreSQL's LISTEN/NOTIFY.

A trigger (or a statement) in the writer's transaction calls `pg_notify(channel, '')`; PostgreSQL
delivers it only when that transaction commits, so a woken job always sees the rows that woke it,
and several writes in one transaction wake it once. The price: a transaction that notifies takes a
cluster-wide lock before its commit and holds it until the commit is flushed, so notifying
transactions commit one at a time (measured: ~4,100 small write transactions per second without a
NOTIFY, ~1,300 with one, 16 clients on 2 cores). So notify only when there is work (rewards: the
statements that queued some), and never from paths as common as the outbox, which keeps polling.
The worker holds one connection that listens on every channel its jobs name. Polling stays as the
fallback (and for work that falls due with time, such as a hold ending): a notification lost while
the connection was down is covered by waking every job on reconnect."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog

from referloop.core.db import to_driver_dsn

if TYPE_CHECKING:
    from referloop.runtime import Runtime

log = structlog.get_logger(__name__)

_RECONNECT_PAUSE_SECONDS = (0.5, 1.0, 2.0, 5.0)


class Wakeups:
    def __init__(self, rt: Runtime, channels: Iterable[str]) -> None:
        self._dsn = to_driver_dsn(rt.settings.database_url)
        self._events = {channel: asyncio.Event() for channel in channels}
        self.listening = asyncio.Event()  # set while the connection listens (tests wait for it)
        self.backend_pid: int | None = None

    def event(self, channel: str) -> asyncio.Event:
        return self._events[channel]

    def _wake(self, _connection: Any, _pid: int, channel: str, _payload: str) -> None:
        self._events[channel].set()

    def _wake_all(self) -> None:
        for event in self._events.values():
            event.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Listen until `stop` is set; reconnect (and wake every job) when the connection drops."""
        if not self._events:
            return
        failures = 0
        while not stop.is_set():
            lost = asyncio.Event()
            try:
                connection = await asyncpg.connect(self._dsn, timeout=10)
            except Exception as exc:  # the worker's other loops must outlive any listener failure
                pause = _RECONNECT_PAUSE_SECONDS[min(failures, len(_RECONNECT_PAUSE_SECONDS) - 1)]
                failures += 1
                log.warning("wake-up listener cannot connect", error=str(exc), retry_in_seconds=pause)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)
                continue
            try:
                connection.add_termination_listener(lambda _c, dropped=lost: dropped.set())
                for channel in self._events:
                    await connection.add_listener(channel, self._wake)
                self.backend_pid = connection.get_server_pid()
                failures = 0
                self.listening.set()
                self._wake_all()  # whatever was notified while nobody listened
                stopping = asyncio.ensure_future(stop.wait())
                dropped = asyncio.ensure_future(lost.wait())
                await asyncio.wait({stopping, dropped}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                dropped.cancel()
            except Exception as exc:
                log.warning("wake-up listener lost its connection", error=str(exc))
            finally:
                self.listening.clear()
                with contextlib.suppress(Exception):
                    await connection.close(timeout=2)
