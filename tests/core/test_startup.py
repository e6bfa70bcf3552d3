"""Start-up objects are kept out of the garbage collector's full passes (they were the p99 tail)."""

from __future__ import annotations

import gc
from collections.abc import Callable

from fastapi import FastAPI


async def test_the_api_freezes_what_start_up_made(app_factory: Callable[..., FastAPI]) -> None:
    app = app_factory()
    before = gc.get_freeze_count()
    try:
        async with app.router.lifespan_context(app):
            frozen = gc.get_freeze_count()
        # The app's modules, models and routes: a full pass no longer walks them (about 100 ms each).
        assert frozen > max(before, 100_000)
    finally:
        gc.unfreeze()  # the test process goes back to collecting everything
