"""Fault injection for crash tests: `REFERLOOP_FAULT_INJECT=<point>` makes the process die at that point,
the way a kill -9 or a power cut would (no cleanup, no flush, exit status 137)."""

from __future__ import annotations

import os
import sys

from referloop.config import Settings


def maybe_crash(settings: Settings, point: str) -> None:
    if settings.fault_inject and settings.fault_inject == point:
        sys.stderr.write(f"fault injected at {point}: exiting with 137\n")
        sys.stderr.flush()
        os._exit(137)
