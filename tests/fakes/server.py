"""Run a fake provider's ASGI app on a real loopback port (uvicorn in a thread), and the parts every
fake shares: a request log, and faults that tests schedule (5xx before or after the work is done,
rate limits, slow requests).

The app runs on its own event loop in its own thread, so a fake keeps its state behind a lock and
tests read it from theirs. A worker process (e.g. a crash test) can reach it over HTTP too.
"""

from __future__ import annotations

import secrets
import socket
import string
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from starlette.types import ASGIApp

FaultKind = Literal["error_before", "error_after", "stored_error", "rate_limit", "hold"]


def random_id(prefix: str, length: int = 14) -> str:
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length))


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    status: int = 0


@dataclass
class Fault:
    kind: FaultKind
    method: str | None
    path_prefix: str | None
    remaining: int
    status: int = 500
    retry_after: float | None = None
    seconds: float = 0.0
    legacy: bool = False  # Stripe's old rate limit answer: 400 with code rate_limit

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path_prefix is None or path.startswith(self.path_prefix)
        )


@dataclass
class FaultPlan:
    faults: list[Fault] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, fault: Fault) -> None:
        with self.lock:
            self.faults.append(fault)

    def take(self, kind: FaultKind, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.kind == kind and fault.remaining > 0 and fault.matches(method, path):
                    fault.remaining -= 1
                    return fault
        return None

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()


class LoopbackServer:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        # log_config=None: leave the test process's logging as it is.
        config = uvicorn.Config(
            self.app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"fake-{port}"
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake provider server did not start")
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=5)


class FakeBase:
    """Request log, fault plan and server lifecycle shared by the fakes."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.requests: list[RecordedRequest] = []
        self.faults = FaultPlan()
        self._server: LoopbackServer | None = None

    # -- lifecycle -------------------------------------------------------------------------
    app: ASGIApp

    def start(self) -> str:
        self._server = LoopbackServer(self.app)
        return self._server.start()

    def stop(self) -> None:
        if self._server:
            self._server.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        return self._server.url

    def reset_faults(self) -> None:
        self.faults.clear()

    # -- what tests schedule ---------------------------------------------------------------
    def fail_next(
        self,
        status: int = 500,
        *,
        count: int = 1,
        after: bool = False,
        method: str | None = "POST",
        path: str | None = None,
    ) -> None:
        """Answer the next `count` matching requests with `status`. `after=False`: refused before
        any work (a proxy or overloaded front end). `after=True`: the work is done and stored, but
        the answer is lost (a 5xx on the way back): a retry must find what was made."""
        self.faults.add(Fault("error_after" if after else "error_before", method, path, count, status=status))

    def rate_limit_next(
        self,
        *,
        count: int = 1,
        retry_after: float | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        self.faults.add(Fault("rate_limit", method, path, count, status=429, retry_after=retry_after))

    def hold_next(
        self, seconds: float, *, count: int = 1, method: str | None = "POST", path: str | None = None
    ) -> None:
        """Keep the next matching request in flight for `seconds` (concurrent duplicates meet it)."""
        self.faults.add(Fault("hold", method, path, count, seconds=seconds))

    # -- what tests read -------------------------------------------------------------------
    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        with self.lock:
            return [r for r in self.requests if r.method == method and r.path == path]

    def _record(self, method: str, path: str, headers: dict[str, str], body: bytes) -> RecordedRequest:
        recorded = RecordedRequest(method, path, headers, body)
        with self.lock:
            self.requests.append(recorded)
        return recorded


def lower(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}
